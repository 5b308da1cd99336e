//! Long-term credentials (RFC 8489 section 9.2): the key that MESSAGE-INTEGRITY and
//! MESSAGE-INTEGRITY-SHA256 are keyed with.
//!
//! RFC 8489 section 9.2.2 runs realm and password through the OpaqueString profile (RFC 8265)
//! and the username through UsernameCasePreserved first; both are the identity for ASCII
//! without control characters, which is what `turnserver --user U:P --realm R` and the
//! credentials punchraw derives use. Callers with non-ASCII credentials pass them already
//! prepared.

use md5::{Digest, Md5};
use sha2::Sha256;

/// RFC 8489 section 9.2.2, MD5 (the default algorithm, and the only one RFC 5389 servers
/// such as coturn know): `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for (i, part) in [username, realm, password].into_iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// RFC 8489 section 9.2.2 with PASSWORD-ALGORITHM SHA-256:
/// `SHA-256(username ":" realm ":" password)`.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for (i, part) in [username, realm, password].into_iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize().into()
}
