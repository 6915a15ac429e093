//! FNV-1a, the one stable, platform-independent hash casetag keys things
//! by (hashed n-gram features, language word lists, near-duplicate
//! shingles): the same input hashes alike on every machine and run.

/// FNV-1a 64-bit offset basis: where a fresh hash starts.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime: each unit is xored in, then multiplied by it.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Extend FNV-1a hash `h` by `units` (bytes, or characters as their code
/// points), one multiply per unit.
#[inline]
pub fn fnv1a(mut h: u64, units: impl IntoIterator<Item = u64>) -> u64 {
    for u in units {
        h = (h ^ u).wrapping_mul(FNV_PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The reference FNV-1a 64 test vectors.
        assert_eq!(fnv1a(FNV_OFFSET, []), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            fnv1a(FNV_OFFSET, b"a".iter().map(|&b| u64::from(b))),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(
            fnv1a(FNV_OFFSET, b"foobar".iter().map(|&b| u64::from(b))),
            0x8594_4171_f739_67e8
        );
    }
}
