//! FNV-1a (64 bit), the digest of everything mailfleet stores or compares
//! between processes: applied objects, sender configs, agent seeds, file
//! fingerprints, abuse-report identities. Unlike the standard library's
//! hasher it gives the same value in every build, on every replica and
//! after an upgrade, so a stored digest stays comparable. The algorithm is
//! the `fnv` crate's.

use std::hash::Hasher;

use fnv::FnvHasher;

/// The digest of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hasher = FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// The digest of `parts`, each followed by a NUL, so that ("ab", "c") and
/// ("a", "bc") differ.
pub fn fnv1a_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = FnvHasher::default();
    for part in parts {
        hasher.write(part);
        hasher.write(&[0]);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): FNV-1a 64 of "" and "a".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(
            fnv1a_parts([&b"ab"[..], b"c"]),
            fnv1a_parts([&b"a"[..], b"bc"])
        );
        assert_eq!(fnv1a_parts([&b"ab"[..], b"c"]), fnv1a(b"ab\0c\0"));
    }
}
