//! Integration tests of flywheel-stats: the live comparison with gbstats 0.8.0 (`oracle`) and seeded simulations
//! of the statistical properties (`simulation`).

mod oracle;
mod simulation;

use rand::Rng;

/// A standard normal draw (Box–Muller; one of the pair is enough here).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(1e-300);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
