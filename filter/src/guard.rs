//! PLACEHOLDER (replaced by the guard-math branch): the guard's sequential test.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmTally {
    pub requests: u64,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    MaxErrorRate(f64),
    VsBaseline { max_increase: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardTest {
    pub alpha: f64,
    pub min_errors: u64,
    pub bound: Bound,
}

pub const DEFAULT_ALPHA: f64 = 0.001;
pub const DEFAULT_MIN_ERRORS: u64 = 5;

pub fn ln_gamma(x: f64) -> f64 {
    let mut x = x;
    let mut acc = 0.0;
    while x < 7.0 {
        acc -= x.ln();
        x += 1.0;
    }
    acc + (x - 0.5) * x.ln() - x + 0.5 * (std::f64::consts::TAU).ln() + 1.0 / (12.0 * x)
}

fn ln_bb(t: ArmTally) -> f64 {
    let (n, e) = (t.requests as f64, t.errors.min(t.requests) as f64);
    ln_gamma(e + 0.5) + ln_gamma(n - e + 0.5) - ln_gamma(n + 1.0) - 2.0 * ln_gamma(0.5)
        + ln_gamma(1.0)
}

fn ln_lik(t: ArmTally, p: f64) -> f64 {
    let (n, e) = (t.requests as f64, t.errors.min(t.requests) as f64);
    let a = if e > 0.0 { e * p.ln() } else { 0.0 };
    let b = if n > e { (n - e) * (1.0 - p).ln() } else { 0.0 };
    a + b
}

impl GuardTest {
    pub fn log_evidence(&self, c: ArmTally, b: ArmTally) -> f64 {
        let r = |t: ArmTally| t.errors.min(t.requests) as f64 / (t.requests.max(1)) as f64;
        let v = match self.bound {
            Bound::MaxErrorRate(p0) => ln_bb(c) - ln_lik(c, r(c).min(p0)),
            Bound::VsBaseline { .. } => {
                if r(c) <= r(b) {
                    return 0.0;
                }
                let n = (c.requests + b.requests).max(1) as f64;
                let p = (c.errors + b.errors) as f64 / n;
                ln_bb(c) + ln_bb(b) - ln_lik(c, p) - ln_lik(b, p)
            }
        };
        if v.is_nan() {
            0.0
        } else {
            v
        }
    }

    pub fn trips(&self, c: ArmTally, b: ArmTally) -> bool {
        c.errors >= self.min_errors && self.log_evidence(c, b) >= (1.0 / self.alpha).ln()
    }
}
