//! Helpers shared by the journal's randomised tests.

/// xorshift64*: fast, and reproducible from a seed that the tests print.
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from the clock; prints the seed so a failure can be replayed.
    #[allow(dead_code)] // not every test binary uses it
    pub fn from_clock(what: &str) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        println!("{what} seed {seed}");
        Self(seed)
    }

    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n`.
    #[allow(dead_code)] // not every test binary uses it
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
