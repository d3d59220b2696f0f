//! Needle in a haystack, RULER's templates: "One of the special magic {numbers} for {key} is:
//! {value}." hidden in a haystack; the question asks for every value of the queried keys.
//!
//! - single: one key, one value (a 7-digit number, a word or a UUID-like string), in repeated
//!   filler sentences or real text;
//! - multikey: the queried needle among needles of other keys (distractors), in real text, or in
//!   a haystack made only of distractor needles (with numbers, or UUIDs as keys and values);
//! - multivalue: several values for one key, all expected;
//! - multiquery: several keys asked at once, every value expected.
//!
//! The first queried needle goes to the cell's depth; the others at seeded random depths.

use msrnn_core::generate::SplitMix64;

use super::words::{self, distinct};
use super::{assemble, Env, Generate, Sample, Task};
use crate::error::Result;

/// What a key or a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `adjective-noun`.
    Key,
    Number,
    Word,
    Uuid,
}

impl Kind {
    fn draw(self, g: &mut SplitMix64) -> String {
        match self {
            Kind::Key => words::key(g),
            Kind::Number => words::number(g),
            Kind::Word => words::word(g),
            Kind::Uuid => words::uuid(g),
        }
    }

    /// The values' name in the prompt.
    fn plural(self) -> &'static str {
        match self {
            Kind::Key => "keys",
            Kind::Number => "numbers",
            Kind::Word => "words",
            Kind::Uuid => "uuids",
        }
    }

    /// About how many tokens a value takes in an answer (with its separator).
    const fn tokens(self) -> usize {
        match self {
            Kind::Key | Kind::Word => 6,
            Kind::Number => 10,
            Kind::Uuid => 36,
        }
    }
}

/// One NIAH layout.
#[derive(Debug, Clone, Copy)]
pub struct Niah {
    /// `filler`, `text`, or `needles` (distractor needles only).
    pub haystack: &'static str,
    /// Needles with distinct keys (the queried ones first).
    pub keys: usize,
    /// Values per key.
    pub values: usize,
    /// Keys asked for.
    pub queries: usize,
    pub key: Kind,
    pub value: Kind,
}

const ONE: Niah = Niah { haystack: "text", keys: 1, values: 1, queries: 1, key: Kind::Key, value: Kind::Number };
pub const SINGLE_1: Niah = Niah { haystack: "filler", ..ONE };
pub const SINGLE_2: Niah = ONE;
pub const SINGLE_3: Niah = Niah { value: Kind::Uuid, ..ONE };
pub const SINGLE_WORD: Niah = Niah { value: Kind::Word, ..ONE };
pub const MULTIKEY_1: Niah = Niah { keys: 4, ..ONE };
pub const MULTIKEY_2: Niah = Niah { haystack: "needles", ..ONE };
pub const MULTIKEY_3: Niah = Niah { haystack: "needles", key: Kind::Uuid, value: Kind::Uuid, ..ONE };
pub const MULTIVALUE: Niah = Niah { values: 4, ..ONE };
pub const MULTIQUERY: Niah = Niah { keys: 4, queries: 4, ..ONE };

/// The registry's entry of a layout.
pub const fn task(name: &'static str, n: &'static Niah) -> Task {
    Task {
        name,
        family: "niah",
        haystack: n.haystack,
        depths: true,
        answer_tokens: 16 + n.queries * n.values * n.value.tokens(),
        make: n,
    }
}

impl Niah {
    fn needle(&self, key: &str, value: &str) -> String {
        format!("One of the special magic {} for {key} is: {value}.", self.value.plural())
    }
}

/// `a`, `a and b`, `a, b, and c`.
fn listing(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

impl Generate for Niah {
    fn make(&self, env: &Env<'_>, g: &mut SplitMix64, length: usize, depth: f64) -> Result<Sample> {
        let keys = distinct(g, self.keys, |g| self.key.draw(g));
        // Values distinct over the whole prompt, and never part of a key (a word value could
        // otherwise be read off the key the answer repeats).
        let mut values: Vec<Vec<String>> = Vec::new();
        let mut all: Vec<String> = Vec::new();
        for _ in &keys {
            let mut vs = Vec::new();
            while vs.len() < self.values {
                let v = self.value.draw(g);
                if !all.contains(&v) && !keys.iter().any(|k| k.contains(&v)) {
                    all.push(v.clone());
                    vs.push(v);
                }
            }
            values.push(vs);
        }
        let mut needles = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            for (i, v) in values[k].iter().enumerate() {
                let d = if k == 0 && i == 0 { depth } else { g.next_f64() };
                needles.push((env.needle(self.haystack, &self.needle(key, v))?, d));
            }
        }
        let queried = &keys[..self.queries];
        let query = listing(queried);
        let kind = self.value.plural();
        let (head, tail) = env.frame(
            &format!(
                "Some special magic {kind} are hidden within the following text. Make sure to memorize it. \
                 I will quiz you about the {kind} afterwards."
            ),
            &format!("What are all the special magic {kind} for {query} mentioned in the provided text?"),
            &format!("The special magic {kind} for {query} mentioned in the provided text are"),
        )?;
        let (tokens, at) = if self.haystack == "needles" {
            let mut units = || -> Result<Vec<u32>> {
                let key = loop {
                    let k = self.key.draw(g);
                    if !keys.contains(&k) {
                        break k;
                    }
                };
                env.needle("needles", &self.needle(&key, &self.value.draw(g)))
            };
            assemble(&head, &needles, &tail, &mut units, length)?
        } else {
            let mut units = env.units(self.haystack, g)?;
            assemble(&head, &needles, &tail, &mut *units, length)?
        };
        let expected = values[..self.queries].concat();
        let n = self.queries * self.values;
        Ok(Sample { tokens, expected, needles: at[..n].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_listed_in_english() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(listing(&s(&["a"])), "a");
        assert_eq!(listing(&s(&["a", "b"])), "a and b");
        assert_eq!(listing(&s(&["a", "b", "c"])), "a, b, and c");
    }
}
