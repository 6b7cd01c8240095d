//! A small deterministic generator for the unit tests' generated inputs (xorshift64).

/// Successive pseudo-random numbers from `seed` (not zero), the same on every run.
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state = step(state);
        state
    }
}

/// The number after `state` (for a generator kept in a `Cell`).
pub(crate) fn step(mut state: u64) -> u64 {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state
}
