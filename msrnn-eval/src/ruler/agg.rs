//! Aggregation (RULER's `cwe` and `fwe`): the context is a long list of made-up words with planted
//! frequencies; the answer must name the most frequent ones. The list grows until the prompt is as
//! long as asked (up to one item less).
//!
//! - cwe: 10 common words each `fc` times among uncommon words each `fu` times, numbered
//!   (`1. bakoru 2. tisemo ...`); `fc` grows with the length (3 at ~500 tokens, 30 from ~5k: RULER
//!   uses 30 and 3 at its lengths), `fu = max(1, fc / 10)`;
//! - fwe: words with Zipf counts (`n / r^2`, normalised; every word at least once): the three most
//!   frequent are expected.

use msrnn_core::generate::SplitMix64;

use super::words::{distinct, pseudo_word, shuffle};
use super::{fit, Env, Generate, Sample};
use crate::error::{Error, Result};

/// Common-words extraction.
#[derive(Debug, Clone, Copy)]
pub struct Cwe {
    pub common: usize,
}

pub const CWE: Cwe = Cwe { common: 10 };

/// Frequent-words extraction.
#[derive(Debug, Clone, Copy)]
pub struct Fwe {
    pub top: usize,
    /// Words in the vocabulary (ranks of the Zipf law).
    pub vocab: usize,
    pub alpha: f64,
}

pub const FWE: Fwe = Fwe { top: 3, vocab: 30, alpha: 2.0 };

/// How often a common and an uncommon word appear in a cwe list of about `length` tokens.
pub fn cwe_frequencies(length: usize) -> (usize, usize) {
    let items = length / 4;
    let fc = (items / 40).clamp(3, 30);
    (fc, (fc / 10).max(1))
}

/// The cwe list: `common` words `fc` times, `uncommon` words `fu` times, shuffled.
pub fn cwe_list(g: &mut SplitMix64, common: &[String], uncommon: &[String], fc: usize, fu: usize) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for w in common {
        list.extend(std::iter::repeat_n(w.clone(), fc));
    }
    for w in uncommon {
        list.extend(std::iter::repeat_n(w.clone(), fu));
    }
    shuffle(g, &mut list);
    list
}

impl Generate for Cwe {
    fn make(&self, env: &Env<'_>, g: &mut SplitMix64, length: usize, _depth: f64) -> Result<Sample> {
        let common = distinct(g, self.common, |g| pseudo_word(g, 3));
        let (fc, fu) = cwe_frequencies(length);
        let (head, tail) = env.frame(
            "Below is a numbered list of words. In these words, some appear more often than others. Memorize the \
             ones that appear most often.",
            &format!("Question: What are the {} most common words in the above list?", self.common),
            &format!("Answer: The top {} words that appear most often in the list are:", self.common),
        )?;
        let base = g.clone();
        let make = |n: usize| -> String {
            let mut g = base.clone();
            let uncommon = distinct(&mut g, n, |g| loop {
                let w = pseudo_word(g, 3);
                if !common.contains(&w) {
                    break w;
                }
            });
            let list = cwe_list(&mut g, &common, &uncommon, fc, fu);
            list.iter().enumerate().map(|(i, w)| format!("{}. {w}", i + 1)).collect::<Vec<_>>().join(" ")
        };
        let (tokens, _) = fit(env, &head, &tail, length, &make)?;
        Ok(Sample { tokens, expected: common, needles: Vec::new() })
    }
}

impl Fwe {
    /// The count of each rank for a text of about `n` words.
    pub fn counts(&self, n: usize) -> Vec<usize> {
        let h: f64 = (1..=self.vocab).map(|r| (r as f64).powf(-self.alpha)).sum();
        (1..=self.vocab).map(|r| ((n as f64 * (r as f64).powf(-self.alpha) / h) as usize).max(1)).collect()
    }
}

impl Generate for Fwe {
    fn make(&self, env: &Env<'_>, g: &mut SplitMix64, length: usize, _depth: f64) -> Result<Sample> {
        let vocab = distinct(g, self.vocab, |g| pseudo_word(g, 2));
        let (head, tail) = env.frame(
            "Read the following coded text and track the frequency of each coded word. Find the three most \
             frequently appeared coded words.",
            "Question: Do not provide any explanation. What are the three most frequently appeared words in the \
             above coded text?",
            "Answer: According to the coded text above, the three most frequently appeared words are:",
        )?;
        let base = g.clone();
        let make = |n: usize| -> String {
            let mut g = base.clone();
            let mut text: Vec<&str> = Vec::new();
            for (w, c) in vocab.iter().zip(self.counts(n)) {
                text.extend(std::iter::repeat_n(w.as_str(), c));
            }
            shuffle(&mut g, &mut text);
            text.join(" ")
        };
        let (tokens, n) = fit(env, &head, &tail, length, &make)?;
        let counts = self.counts(n);
        if counts[self.top - 1] <= counts[self.top] {
            return Err(Error::setting(
                "lengths",
                format!(" {length}: too short for fwe (its {} most frequent words would not stand out)", self.top),
            ));
        }
        Ok(Sample { tokens, expected: vocab[..self.top].to_vec(), needles: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwe_plants_its_frequencies() {
        assert_eq!(cwe_frequencies(512), (3, 1));
        assert_eq!(cwe_frequencies(4096), (25, 2));
        assert_eq!(cwe_frequencies(8192), (30, 3));
        let mut g = SplitMix64::new(1);
        let common: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let uncommon: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
        let list = cwe_list(&mut g, &common, &uncommon, 5, 2);
        assert_eq!(list.len(), 10 * 5 + 50 * 2);
        for w in &common {
            assert_eq!(list.iter().filter(|x| *x == w).count(), 5);
        }
        assert_eq!(list.iter().filter(|x| *x == "u7").count(), 2);
    }

    #[test]
    fn fwe_counts_follow_zipf_and_the_top_three_stand_out() {
        let c = FWE.counts(1000);
        assert_eq!(c.len(), 30);
        // 1000 / 1^2 / H(30, 2) with H = 1.6122...
        assert_eq!(c[0], 620);
        assert_eq!(c[1], 155);
        assert_eq!(c[2], 68);
        assert_eq!(c[3], 38);
        assert!(c.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(*c.last().unwrap(), 1);
    }
}
