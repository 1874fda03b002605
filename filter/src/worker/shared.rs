//! Adding a worker's counts into shared data, where every worker of the Envoy adds its own: a
//! bounded read-modify-CAS loop. What cannot be written (contention, foreign bytes under our key)
//! stays with the caller for the next tick, so nothing is lost or counted twice.

use crate::host::{Host, SetError};
use crate::report::add_le_u64s;

/// A CAS that no stored value carries (the host's CAS counter would have to land on exactly this
/// value), used to create a key: if another worker created it first the write fails with a CAS
/// mismatch and is retried as an update, where CAS 0 would silently overwrite that worker's counts.
pub(super) const CREATE_ONLY_CAS: u32 = u32::MAX;

/// Adds `delta` into the u64 array under `key` in shared data and returns the new total; `None`
/// when it could not: the caller keeps the delta.
pub(super) fn cas_add(host: &impl Host, key: &str, delta: &[u64]) -> Option<Vec<u8>> {
    cas_merge(host, key, |stored| add_le_u64s(stored, delta))
}

/// The bounded read-modify-CAS loop of [`cas_add`], for any merge: `merge` returns the new value
/// from the stored one, or `None` when the stored bytes are not ours.
pub(super) fn cas_merge(
    host: &impl Host,
    key: &str,
    merge: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    for _ in 0..8 {
        let (stored, cas) = host.shared_get(key)?;
        let Some(total) = merge(stored.as_deref()) else {
            log::warn!("ramp: shared data {key:?} holds foreign bytes; not merging");
            return None;
        };
        match host.shared_set(key, &total, cas.unwrap_or(CREATE_ONLY_CAS)) {
            Ok(()) => return Some(total),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Other) => return None,
        }
    }
    None
}
