//! The names and hashes a Felix-rendered ruleset carries, so the rendering can be diffed against
//! `iptables-save` on a real node: length-limited chain names, the `cali:` rule hash chain, IP set IDs,
//! policy group IDs, and kube-proxy's chain names (notes/felix-iptables.md §6, §8.1, §9, §13.1).

use sha2::{Digest, Sha224, Sha256};
use sha3::Sha3_224;

/// iptables' longest chain name (Felix's `MaxChainNameLength`).
pub const MAX_CHAIN_NAME: usize = 28;
/// Felix keeps the first this many characters of a rule's hash.
const RULE_HASH_LEN: usize = 16;

/// Unpadded URL-safe base64 (RFC 4648 §5).
pub fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Standard base32 (RFC 4648 §6), padded, as kube-proxy encodes its chain hashes.
pub fn base32_std(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in bytes.chunks(5) {
        let mut b = [0u8; 5];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = b.iter().fold(0u64, |acc, &x| acc << 8 | x as u64);
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                out.push(ALPHABET[(n >> (35 - 5 * i) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `prefix + suffix`, or, when that is longer than `max` (or exactly `max` with a suffix starting with
/// `_`, the shortened marker), `prefix + "_" +` the start of the suffix's SHA-256 (libcalico-go
/// `GetLengthLimitedID`).
pub fn length_limited_id(prefix: &str, suffix: &str, max: usize) -> String {
    let suffix = if suffix.is_empty() { "_" } else { suffix };
    let total = prefix.len() + suffix.len();
    if total > max || (total == max && suffix.starts_with('_')) {
        let hash = base64_url(&Sha256::digest(suffix.as_bytes()));
        let room = max.saturating_sub(1 + prefix.len()).min(hash.len());
        format!("{prefix}_{}", &hash[..room])
    } else {
        format!("{prefix}{suffix}")
    }
}

/// A chain name: `prefix + suffix`, hashed when over iptables' limit.
pub fn chain_name(prefix: &str, suffix: &str) -> String {
    length_limited_id(prefix, suffix, MAX_CHAIN_NAME)
}

/// `prefix:` and the SHA-224 of `prefix:content` (libcalico-go `MakeUniqueID`): IP set IDs.
pub fn unique_id(prefix: &str, content: &str) -> String {
    format!("{prefix}:{}", base64_url(&Sha224::digest(format!("{prefix}:{content}").as_bytes())))
}

/// The `cali:` hashes of a chain's rules, from their text as Felix hashes it (`-A <chain> HASH …`): each
/// hash chains in the one before it, starting from the chain's name (Felix `RuleHashes`).
pub fn rule_hashes(chain: &str, rendered: &[String]) -> Vec<String> {
    let mut prev = Sha224::digest(chain.as_bytes()).to_vec();
    rendered
        .iter()
        .map(|text| {
            let mut h = Sha224::new();
            h.update(&prev);
            h.update(text.as_bytes());
            prev = h.finalize().to_vec();
            base64_url(&prev)[..RULE_HASH_LEN].to_string()
        })
        .collect()
}

/// The ID of a policy group chain (`cali-gi-`/`cali-go-`): SHA3-224 over its lines, each ending in `\n`.
pub fn group_uid(lines: &[String]) -> String {
    let mut h = Sha3_224::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    base64_url(&h.finalize())[..20].to_string()
}

/// kube-proxy's hash of a service port (`KUBE-SVC-`/`KUBE-EXT-` suffix): base32 of SHA-256 of the
/// service port name and protocol, first 16 characters.
pub fn kube_port_hash(service_port_name: &str, protocol: &str) -> String {
    base32_std(&Sha256::digest(format!("{service_port_name}{protocol}").as_bytes()))[..16].to_string()
}

/// kube-proxy's hash of one endpoint of a service port (`KUBE-SEP-` suffix).
pub fn kube_endpoint_hash(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    base32_std(&Sha256::digest(format!("{service_port_name}{protocol}{endpoint}").as_bytes()))[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_felix() {
        // The vectors of notes/felix-iptables.md §9.1 (from Calico's own tests).
        assert_eq!(chain_name("cali-pi-", "gnp/allow-dns"), "cali-pi-gnp/allow-dns");
        assert_eq!(chain_name("cali-pi-", "knp/default/allow-frontend"), "cali-pi-_FJ7pway3mX3ogPCfFDC");
        assert_eq!(chain_name("cali-pi-", "np/default/allow-frontend"), "cali-pi-_AEqe5CO8bQySdgSCz3G");
        assert_eq!(chain_name("cali-pi-", "gnp/long-policy-name-that-gets-hashed"), "cali-pi-_PymyFHQQg3808jiz1OJ");
        assert_eq!(chain_name("cali-pri-", "ksa.default.default"), "cali-pri-ksa.default.default");
        assert_eq!(chain_name("cali-pri-", "ksa.kube-system.coredns"), "cali-pri-_u2Tn2rSoAPffvE7JO6");
        assert_eq!(chain_name("cali-pri-", "projectcalico-default-allow"), "cali-pri-_TI1Jm4dJqQzYb0Rx3u");
        assert_eq!(chain_name("cali-fh-", "any-interface-at-all"), "cali-fh-any-interface-at-all");
        assert_eq!(chain_name("cali-fhfw-", "any-interface-at-all"), "cali-fhfw-_Nqh4HyA73udmyanQI");
        assert_eq!(chain_name("cali-thfw-", "any-interface-at-all"), "cali-thfw-_Nqh4HyA73udmyanQI");
    }

    #[test]
    fn set_ids_match_felix() {
        assert_eq!(unique_id("s", "all()"), "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug");
        assert_eq!(unique_id("s", "app == \"frontend\""), "s:NgAztXgCjQllj3pd-bE8lGiQIfjv1kgSqFjDzg");
        let all = unique_id("s", "all()");
        assert_eq!(unique_id("n", &format!("{all},tcp,http")), "n:cl9_Kgeu4H0OGLbhovVR3NBLUOZscKeMK1Mu4A");
    }

    #[test]
    fn rule_hashes_match_felix() {
        // Kernel-chain hooks are hashed as a chain named after the kernel chain; appends as `*appends*`.
        let h = rule_hashes("PREROUTING", &["-A PREROUTING HASH --jump cali-PREROUTING".into()]);
        assert_eq!(h, ["6gwbT8clXdHdC1b1"]);
        let h = rule_hashes(
            "FORWARD*appends*",
            &[
                "-A FORWARD*appends* HASH -m comment --comment \"Policy explicitly accepted packet.\" -m mark --mark \
                 0x10000/0x10000 --jump ACCEPT"
                    .into(),
                "-A FORWARD*appends* HASH --jump MARK --set-mark 0x10000/0x10000".into(),
            ],
        );
        assert_eq!(h, ["S93hcgKJrXEqnTfs", "mp77cMpurHhyjLrM"]);
    }

    #[test]
    fn kube_proxy_names_match() {
        assert_eq!(kube_port_hash("default/web:http", "tcp"), "CDGGSHYLG3RE2FKL");
        assert_eq!(kube_endpoint_hash("default/web:http", "tcp", "10.65.0.3:8080"), "CO3HLDFV5XKYN2I2");
        assert_eq!(kube_endpoint_hash("default/web:http", "tcp", "10.65.1.7:8080"), "U7IZX6P4YCMM3ZCV");
    }

    #[test]
    fn encodings() {
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base32_std(b"f"), "MY======");
        assert_eq!(base32_std(b"foobar"), "MZXW6YTBOI======");
    }
}
