//! Sticky assignment: the same key lands on the same arm on every worker, Envoy and machine, and a
//! weight change only moves the users it must.
//!
//! The method is weighted rendezvous hashing (Schindelhauer & Schomaker, "Weighted distributed hash
//! tables", 2005; also Resch, "New Hashing Algorithms for Data Storage", 2015): every arm draws
//! `u = hash(salt, key, arm)` in (0, 1) and scores `-ln(u) / weight`; the lowest score wins. Each score
//! is an Exp(weight) variable, so arm `i` wins with probability `w_i / sum(w)`. Raising one arm's
//! weight only lowers that arm's score, so users only ever move *into* it (a 5 -> 10 -> 25 ramp keeps
//! the first 5% on the canary); a weight of 0 never wins. Unlike laying arms out as ranges of one bucket
//! line, this holds with any number of arms: ramping one candidate never reshuffles another.

/// FNV-1a, 64 bit (Fowler, Noll, Vo; parameters from the IETF draft-eastlake-fnv).
pub(crate) fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// MurmurHash3's 64-bit finaliser: FNV's low bits avalanche poorly, this spreads every input bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The FNV state after the analysis salt and its separator, worked out at compile time: the
/// request path hashes only the key.
const ANALYSIS_PREFIX: u64 = {
    let (salt, mut h, mut i) = (b"ramp.analysis-bucket", FNV_OFFSET, 0);
    while i < salt.len() {
        h = (h ^ salt[i] as u64).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    (h ^ 0xff).wrapping_mul(FNV_PRIME)
};

/// The analysis bucket of a sticky key (`< BUCKETS`): a hash under a salt of its own, so it is
/// independent of the arm the key is assigned to and every arm's users spread over all buckets.
/// Equal to `key_hash("ramp.analysis-bucket", key, "") >> 58`.
pub fn analysis_bucket(key: &str) -> usize {
    (arm_hash(keyed(ANALYSIS_PREFIX, key), "") >> 58) as usize
}

/// The stable 64-bit hash of (salt, key, arm). 0xFF never occurs in UTF-8, so the separators make the
/// encoding unambiguous ("ab"+"c" differs from "a"+"bc").
pub fn key_hash(salt: &str, key: &str, arm: &str) -> u64 {
    arm_hash(keyed(salted(salt), key), arm)
}

/// FNV is a stream, so the state after (salt, separator) and then (key, separator) is shared by
/// every arm's hash of one key: the request path hashes the salt and the key once, not per arm.
fn salted(salt: &str) -> u64 {
    fnv1a64(fnv1a64(FNV_OFFSET, salt.as_bytes()), &[0xff])
}

fn keyed(salted: u64, key: &str) -> u64 {
    fnv1a64(fnv1a64(salted, key.as_bytes()), &[0xff])
}

fn arm_hash(keyed: u64, arm: &str) -> u64 {
    fmix64(fnv1a64(keyed, arm.as_bytes()))
}

/// Maps a hash to the open interval (0, 1) using its top 52 bits, so `ln` is always finite (with 53
/// bits, `2^53 - 0.5` would round up to exactly 1.0).
pub fn unit_interval(hash: u64) -> f64 {
    ((hash >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// The arm `key` is pinned to among `(arm name, weight)` pairs, or `None` when no weight is positive.
pub fn sticky_arm<'a>(
    salt: &str,
    key: &str,
    arms: impl IntoIterator<Item = (&'a str, f64)>,
) -> Option<usize> {
    let keyed = keyed(salted(salt), key);
    let mut best: Option<(usize, f64)> = None;
    for (i, (arm, w)) in arms.into_iter().enumerate() {
        if w.is_nan() || w <= 0.0 {
            continue;
        }
        let score = -libm::log(unit_interval(arm_hash(keyed, arm))) / w;
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every arm's users spread over all 64 buckets, evenly: with 40,000 keys split 10/90 by the
    /// sticky hash, the canary's 4,000 fill every bucket, and Pearson's chi-square of the bucket
    /// counts over all keys stays below 103.4 (the 0.999 quantile of chi-square with 63 degrees
    /// of freedom: scipy.stats.chi2.ppf(0.999, 63) = 103.44).
    #[test]
    fn analysis_buckets_are_even_and_independent_of_the_arm() {
        let (mut all, mut canary) = ([0u64; 64], [0u64; 64]);
        for i in 0..40_000 {
            let key = format!("user-{i}");
            let b = analysis_bucket(&key);
            all[b] += 1;
            if sticky_arm("s", &key, [("v1", 90.0), ("v2", 10.0)]) == Some(1) {
                canary[b] += 1;
            }
        }
        let expected = 40_000.0 / 64.0;
        let chi2: f64 = all
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 103.44, "{chi2}");
        assert!(canary.iter().all(|&c| c > 20), "{canary:?}");
    }

    /// Test vectors from the FNV reference (draft-eastlake-fnv, "FNV-1a 64 bit" column).
    fn pick(salt: &str, key: &str, arms: &[&'static str], weights: &[f64]) -> Option<usize> {
        sticky_arm(salt, key, arms.iter().copied().zip(weights.iter().copied()))
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
    }

    /// Users must keep their arm across a filter upgrade: these values were recorded from the
    /// first implementation (one FNV pass per (salt, key, arm)) and must never change.
    #[test]
    fn hashes_and_assignments_are_stable_across_versions() {
        for (salt, key, arm, want) in [
            ("bench_sticky", "user-424242", "v1", 0x8a22331800e2641d_u64),
            ("bench_sticky", "user-424242", "v2", 0xf664a92c3cd4977e),
            ("s", "", "canary", 0xfae32d1d14c6e168),
            ("ramp.analysis-bucket", "alice", "", 0x1a11b9d591d1824c),
        ] {
            assert_eq!(key_hash(salt, key, arm), want, "{salt} {key} {arm}");
        }
        let (mut picks, mut buckets) = (String::new(), Vec::new());
        for i in 0..40 {
            let key = format!("user-{}", i * 7919);
            let arms = [("v1", 90.0), ("v2", 10.0), ("v3", 5.0)];
            picks.push_str(&sticky_arm("bench_sticky", &key, arms).unwrap().to_string());
            buckets.push(analysis_bucket(&key));
            assert_eq!(
                analysis_bucket(&key),
                (key_hash("ramp.analysis-bucket", &key, "") >> 58) as usize
            );
        }
        assert_eq!(picks, "0000000021000000001000000000000000000000");
        assert_eq!(
            buckets,
            [
                5, 8, 11, 1, 19, 56, 24, 35, 27, 33, 2, 29, 6, 34, 33, 3, 14, 31, 33, 46, 62, 45,
                43, 60, 0, 16, 27, 21, 45, 60, 50, 24, 46, 47, 49, 5, 60, 37, 49, 45
            ]
        );
    }

    #[test]
    fn separators_keep_fields_apart() {
        assert_ne!(key_hash("s", "ab", "c"), key_hash("s", "a", "bc"));
        assert_ne!(key_hash("s1", "u", "v1"), key_hash("s2", "u", "v1"));
    }

    #[test]
    fn unit_interval_stays_open() {
        assert!(unit_interval(0) > 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
    }

    #[test]
    fn zero_weight_never_wins_and_all_zero_gives_none() {
        let arms = ["v1", "v2"];
        for i in 0..2000 {
            assert_eq!(pick("s", &i.to_string(), &arms, &[1.0, 0.0]), Some(0));
        }
        assert_eq!(pick("s", "k", &arms, &[0.0, 0.0]), None);
    }

    #[test]
    fn raising_one_arm_only_moves_users_into_it_even_with_three_arms() {
        let arms = ["base", "c1", "c2"];
        let ramp = [5.0, 10.0, 25.0, 50.0, 100.0];
        for u in 0..20_000 {
            let key = format!("user-{u}");
            let mut prev = None;
            for &w in &ramp {
                // c1 ramps while c2 stays at 10 and the baseline takes the rest.
                let weights = [100.0 - w, w, 10.0];
                let now = pick("salt", &key, &arms, &weights);
                // Nobody leaves the arm that grew; every move goes into it or out of the arm that shrank
                // (a range layout [c1 | c2 | base] churns exactly the same way).
                if let Some(p) = prev {
                    assert!(
                        now == p || now == Some(1) || p == Some(0),
                        "{key} moved {p:?} -> {now:?} at c1={w}"
                    );
                }
                prev = Some(now);
            }
        }
    }

    /// Pearson chi-square goodness of fit; critical value for df = 2 at alpha = 0.001 is 13.816
    /// (NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.4).
    #[test]
    fn two_arm_ramp_moves_users_only_from_baseline_to_canary() {
        let arms = ["base", "canary"];
        let ramp = [0.0, 5.0, 10.0, 25.0, 50.0, 100.0];
        for u in 0..20_000 {
            let key = format!("user-{u}");
            let arms_at = ramp.map(|w| pick("salt", &key, &arms, &[100.0 - w, w]));
            let first_canary = arms_at.iter().position(|a| *a == Some(1)).unwrap();
            assert!(
                arms_at[first_canary..].iter().all(|a| *a == Some(1)),
                "{key}: {arms_at:?}"
            );
            assert!(
                arms_at[..first_canary].iter().all(|a| *a == Some(0)),
                "{key}: {arms_at:?}"
            );
        }
    }

    #[test]
    fn shares_follow_weights() {
        let arms = ["a", "b", "c"];
        let weights = [60.0, 30.0, 10.0];
        let n = 60_000;
        let mut counts = [0u32; 3];
        for u in 0..n {
            counts[pick("demo", &format!("{u}"), &arms, &weights).unwrap()] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(weights)
            .map(|(&c, w)| {
                let e = n as f64 * w / 100.0;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 13.816, "chi2 = {chi2}, counts = {counts:?}");
    }
}
