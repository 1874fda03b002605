//! Every name a filter's workers share inside one Envoy: the shared-data keys and the shadow
//! queue. All prefixed with `ramp.`, since Istio leaves `vm_id` empty and every plugin on a proxy
//! shares one namespace; one key per rollout (and arm), so the key set stays bounded. A key's
//! `vN` is the layout of the bytes stored under it, so a filter never merges into bytes of
//! another layout.

/// This Envoy's bandit totals of one arm (`counters`: trials and reward sum, two u64s).
pub fn bandit_key(rollout: &str, arm: &str) -> String {
    format!("ramp.bandit.v1.{rollout}.{arm}")
}

/// This Envoy's report totals of one arm (`report::ArmReport`, all workers). v4: with the
/// pre-period's requests and 5xx per bucket (CUPED).
pub fn counts_key(rollout: &str, arm: &str) -> String {
    format!("ramp.ctl.v4.{rollout}.counts.{arm}")
}

/// This Envoy's streaming totals of one arm (`stream::StreamCounts`, all workers).
pub fn stream_key(rollout: &str, arm: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.stream.{arm}")
}

/// This Envoy's shadow comparison totals (`shadow::TOTAL_NAMES`, all workers).
pub fn shadow_key(rollout: &str) -> String {
    format!("ramp.ctl.v2.{rollout}.shadow")
}

/// This Envoy's exact prediction sums (`shadow::encode_moments`, all workers).
pub fn moments_key(rollout: &str) -> String {
    format!("ramp.ctl.v2.{rollout}.moments")
}

/// This Envoy's id in its reports, made once by whichever worker gets there first.
pub fn instance_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.instance")
}

/// The poller lease: which worker polls the controller (`live::Lease`).
pub fn lease_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.lease")
}

/// The newest live state, checked, that every worker applies (`live::Applied`). v3: with the
/// pre-period's weights after the arms (CUPED); v4: a flags word and the guard.
pub fn state_key(rollout: &str) -> String {
    format!("ramp.ctl.v4.{rollout}.state")
}

/// This Envoy's guard (`guard_share::GuardRecord`, all workers) under one plugin config (`config`,
/// its bytes): a new config starts a record of its own, so a static guard's trip and counts do not
/// outlive the config they were made under (a key per config an Envoy has run, each small).
pub fn guard_key(rollout: &str, config: &[u8]) -> String {
    let fingerprint = crate::bucket::fnv1a64(crate::bucket::FNV_OFFSET, config);
    format!("ramp.guard.v3.{rollout}.{fingerprint:016x}")
}

/// One worker VM's shared queue, on which its HTTP contexts hand shadow copies to its root
/// context; `id` is random, so the workers' queues differ.
pub fn shadow_queue(id: u64) -> String {
    format!("ramp.shadow.{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are a contract between the workers of one Envoy, and between two versions of the
    /// filter during a rollout of the filter itself: a change must bump the key's version.
    #[test]
    fn the_names_are_stable() {
        assert_eq!(bandit_key("r", "v1"), "ramp.bandit.v1.r.v1");
        assert_eq!(counts_key("r", "v1"), "ramp.ctl.v4.r.counts.v1");
        assert_eq!(shadow_key("r"), "ramp.ctl.v2.r.shadow");
        assert_eq!(moments_key("r"), "ramp.ctl.v2.r.moments");
        assert_eq!(instance_key("r"), "ramp.ctl.v1.r.instance");
        assert_eq!(lease_key("r"), "ramp.ctl.v1.r.lease");
        assert_eq!(state_key("r"), "ramp.ctl.v4.r.state");
        assert_eq!(guard_key("r", b""), "ramp.guard.v3.r.cbf29ce484222325");
        assert_eq!(shadow_queue(0xab), "ramp.shadow.00000000000000ab");
    }
}
