//! Small helpers every crate of the workspace shares (so each is written once).

/// `1.5 GiB`, `236 MiB`, `8.0 MiB`, `512 B`: sizes for people (errors, tables, logs); values of
/// 100 or more of a unit print without decimals.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if x >= 100.0 {
        format!("{x:.0} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// The FNV-1a offset basis: the `seed` of a fresh [`fnv64`] digest.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a continued from `h` ([`FNV_OFFSET`] to start): a short, stable digest that tells
/// two inputs apart (model files, token lists) without a dependency.
pub fn fnv64(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(236 * 1024 * 1024 + 300_000), "236 MiB");
        assert_eq!(human_bytes(23 * 1024 * 1024 + 600_000), "23.6 MiB");
    }

    #[test]
    fn fnv64_matches_the_published_vectors() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(fnv64(b"", FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64(b"b", fnv64(b"a", FNV_OFFSET)), fnv64(b"ab", FNV_OFFSET));
    }
}
