//! The operating system's randomness, for session ids, binding ids, tokens
//! and generated ticket keys.

use cloudproxy_proto::server::Entropy;

/// Random bytes from the operating system, for session ids, binding ids and
/// tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        // The kernel's generator does not fail once the system is up; a relay
        // that cannot make unpredictable tokens must not run on.
        getrandom::fill(buf).expect("the operating system's random generator failed");
    }
}
