//! Digest strings (`sha256:<hex>`): validation, so a digest can safely name a file.

use crate::CacheError;

/// An OCI digest, always `sha256:<64 lowercase hex>` in this store.
pub type Digest = String;

/// Checks that `digest` is `sha256:` followed by exactly 64 lowercase hex digits, so it can be
/// used as a file name without path tricks.
pub fn validate_digest(digest: &str) -> Result<(), CacheError> {
    let bad = |reason| CacheError::InvalidDigest {
        digest: digest.chars().take(100).collect(),
        reason,
    };
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| bad("only `sha256` digests are supported"))?;
    if hex.len() != 64 {
        return Err(bad("the hex part must be 64 characters long"));
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("the hex part may hold only `0-9` and `a-f`"));
    }
    Ok(())
}

/// Formats a finished sha256 as a digest string.
pub(crate) fn sha256_digest(hash: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_real_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(validate_digest(&d).is_ok());
    }

    #[test]
    fn rejects_bad_digests() {
        for d in [
            "",
            "sha256:",
            "sha512:abc",
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:../{}", "a".repeat(61)),
            &format!("sha256:{}/", "a".repeat(63)),
        ] {
            assert!(validate_digest(d).is_err(), "{d} should be rejected");
        }
    }
}
