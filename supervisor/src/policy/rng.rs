//! A small seeded pseudo-random generator for backoff jitter.
//!
//! Decides nothing by itself: it only turns a caller-chosen seed into a reproducible stream of
//! samples in `[0, 1)` that the caller hands to [`super::Backoff::next_delay`]. It must not seed
//! itself from the clock, the OS or anything else outside: the caller seeds it (from the run id,
//! the pid, the time — its choice), so a test or a replay gets the same jitter every time.
//!
//! The algorithm is SplitMix64 (Steele, Lea, Flood 2014), the generator Java's `SplittableRandom`
//! and the seeding step of the xoshiro family use: one 64-bit state, a Weyl increment and a
//! mixing function. Not for cryptography; plenty for spreading retries.

/// SplitMix64: a seeded, reproducible source of jitter samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`. Every seed, zero included, is fine.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A sample uniform in `[0, 1)`: the top 53 bits over 2^53, so `1.0` is never returned.
    pub fn next_f64(&mut self) -> f64 {
        // 53 bits fit an f64 mantissa exactly; the conversion is lossless.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_for_seed_zero() {
        // Reference values of SplitMix64 seeded with 0 (as published with the algorithm).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn same_seed_same_stream_and_samples_in_unit_interval() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..10_000 {
            let x = a.next_f64();
            assert_eq!(x.to_bits(), b.next_f64().to_bits());
            assert!((0.0..1.0).contains(&x), "{x}");
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }
}
