//! Digest validation and incremental hashing for the algorithms OCI registers (sha256, sha512).

use sha2::{Digest as _, Sha256, Sha512};

use crate::RegistryError;

/// Checks `algorithm:hex` and returns it unchanged; only sha256 and sha512 are accepted because
/// those are the only ones we can verify.
pub(crate) fn validate(digest: &str) -> Result<&str, RegistryError> {
    let bad = |reason: &str| RegistryError::InvalidDigest {
        digest: digest.to_string(),
        reason: reason.to_string(),
    };
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad("missing `algorithm:` prefix"))?;
    let want_len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(bad(&format!(
                "unsupported algorithm `{alg}` (sha256 and sha512 are)"
            )))
        }
    };
    if hex.len() != want_len {
        return Err(bad(&format!(
            "{alg} needs {want_len} hex digits, found {}",
            hex.len()
        )));
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("the hex part must be lowercase 0-9a-f"));
    }
    Ok(digest)
}

pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Hashes with the algorithm of an expected (already validated) digest.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn for_digest(digest: &str) -> Self {
        if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// The digest of `bytes` computed with the algorithm of `like`.
pub(crate) fn digest_like(like: &str, bytes: &[u8]) -> String {
    let mut h = Hasher::for_digest(like);
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_digests() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(validate(&good).is_ok());
        assert!(validate(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "sha256",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("md5:{}", "a".repeat(32)),
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(validate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashes_match_known_values() {
        assert_eq!(
            sha256_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d512 = digest_like("sha512:x", b"");
        assert!(d512.starts_with("sha512:cf83e1357eefb8bd"));
    }
}
