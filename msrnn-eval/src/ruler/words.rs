//! The values the tasks hide and ask for, drawn from the trial's generator: needle keys
//! (`adjective-noun`), 7-digit numbers, words, UUID-like strings, variable names and made-up
//! words. Small embedded lists instead of a dictionary download (RULER draws from `wonderwords`).

use msrnn_core::generate::SplitMix64;

const ADJECTIVES: &[&str] = &[
    "ancient", "brave", "calm", "clever", "crooked", "curious", "damp", "eager", "elegant", "faint", "fierce",
    "fragile", "gentle", "gloomy", "golden", "grumpy", "hollow", "humble", "icy", "jolly", "keen", "lively", "lonely",
    "loud", "lucky", "mellow", "misty", "modern", "narrow", "noble", "odd", "pale", "patient", "polite", "proud",
    "quiet", "rapid", "rare", "rusty", "savage", "shiny", "silent", "silver", "sleepy", "smooth", "solid", "sour",
    "steep", "sticky", "stormy", "sturdy", "sunny", "swift", "tame", "tender", "tidy", "tiny", "vast", "vivid", "wary",
    "wicked", "wild", "wise", "witty",
];

const NOUNS: &[&str] = &[
    "anchor", "apple", "arrow", "badge", "basket", "beacon", "bottle", "bridge", "bucket", "cabin", "candle", "canyon",
    "castle", "cellar", "chimney", "circus", "comet", "compass", "cottage", "crystal", "desert", "dragon", "engine",
    "falcon", "feather", "forest", "fountain", "garden", "glacier", "harbor", "helmet", "island", "jacket", "kettle",
    "ladder", "lantern", "meadow", "mirror", "monkey", "mountain", "needle", "oyster", "palace", "parrot", "pencil",
    "pepper", "pillow", "planet", "pocket", "puzzle", "rabbit", "ribbon", "river", "rocket", "saddle", "shadow",
    "spider", "statue", "tunnel", "turtle", "violin", "wagon", "whistle", "window",
];

/// A needle's key: `adjective-noun`, e.g. `rusty-lantern`.
pub fn key(g: &mut SplitMix64) -> String {
    format!("{}-{}", pick(g, ADJECTIVES), pick(g, NOUNS))
}

/// A 7-digit number (RULER's numbers).
pub fn number(g: &mut SplitMix64) -> String {
    (1_000_000 + g.next_u64() % 9_000_000).to_string()
}

/// A word (a noun).
pub fn word(g: &mut SplitMix64) -> String {
    pick(g, NOUNS).to_string()
}

/// A UUID-like string: 8-4-4-4-12 lower-case hex digits.
pub fn uuid(g: &mut SplitMix64) -> String {
    let hex = |g: &mut SplitMix64, n: usize| -> String {
        (0..n).map(|_| char::from_digit((g.next_u64() % 16) as u32, 16).expect("a hex digit")).collect()
    };
    format!("{}-{}-{}-{}-{}", hex(g, 8), hex(g, 4), hex(g, 4), hex(g, 4), hex(g, 12))
}

/// A variable's name: five upper-case letters.
pub fn var_name(g: &mut SplitMix64) -> String {
    (0..5).map(|_| (b'A' + (g.next_u64() % 26) as u8) as char).collect()
}

/// A made-up word of `syllables` consonant-vowel syllables (`bakoru`).
pub fn pseudo_word(g: &mut SplitMix64, syllables: usize) -> String {
    const C: &[u8] = b"bdfgklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut s = String::with_capacity(2 * syllables);
    for _ in 0..syllables {
        s.push(C[(g.next_u64() % C.len() as u64) as usize] as char);
        s.push(V[(g.next_u64() % V.len() as u64) as usize] as char);
    }
    s
}

/// `n` distinct values from `draw` (which must be able to make that many).
pub fn distinct(g: &mut SplitMix64, n: usize, mut draw: impl FnMut(&mut SplitMix64) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        let v = draw(g);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// A uniform index below `n`.
pub fn below(g: &mut SplitMix64, n: usize) -> usize {
    (g.next_u64() % n.max(1) as u64) as usize
}

/// Shuffles in place (Fisher-Yates).
pub fn shuffle<T>(g: &mut SplitMix64, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, below(g, i + 1));
    }
}

fn pick(g: &mut SplitMix64, list: &[&'static str]) -> &'static str {
    list[below(g, list.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_their_shapes() {
        let mut g = SplitMix64::new(3);
        for _ in 0..50 {
            let n = number(&mut g);
            assert!(n.len() == 7 && n.bytes().all(|b| b.is_ascii_digit()), "{n}");
            let u = uuid(&mut g);
            let parts: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{u}");
            assert!(key(&mut g).contains('-'));
            let v = var_name(&mut g);
            assert!(v.len() == 5 && v.bytes().all(|b| b.is_ascii_uppercase()), "{v}");
            assert_eq!(pseudo_word(&mut g, 3).len(), 6);
        }
        let d = distinct(&mut g, 20, word);
        let mut s = d.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 20);
        let mut v: Vec<usize> = (0..10).collect();
        shuffle(&mut g, &mut v);
        let mut w = v.clone();
        w.sort_unstable();
        assert_eq!(w, (0..10).collect::<Vec<_>>());
    }
}
