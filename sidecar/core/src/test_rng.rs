//! A small deterministic generator for the unit tests' generated inputs (xorshift64).

/// Successive pseudo-random numbers from `seed` (not zero), the same on every run.
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
