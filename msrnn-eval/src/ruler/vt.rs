//! Variable tracking (RULER's `vt`): a chain of assignments `VAR QPWLS = 12345.`, `VAR ZKDRT = VAR
//! QPWLS.`, ... hidden in order at seeded depths of filler sentences; the answer must name every
//! variable that holds the value.

use msrnn_core::generate::SplitMix64;

use super::words::{distinct, var_name};
use super::{assemble, Env, Generate, Sample};
use crate::error::Result;

/// A chain of `hops` assignments after the first (RULER's default: one chain of four hops).
#[derive(Debug, Clone, Copy)]
pub struct Vt {
    pub hops: usize,
}

pub const VT: Vt = Vt { hops: 4 };

impl Generate for Vt {
    fn make(&self, env: &Env<'_>, g: &mut SplitMix64, length: usize, _depth: f64) -> Result<Sample> {
        let names = distinct(g, self.hops + 1, var_name);
        let value = (10_000 + g.next_u64() % 90_000).to_string();
        let mut depths: Vec<f64> = (0..names.len()).map(|_| g.next_f64()).collect();
        depths.sort_by(f64::total_cmp);
        let mut needles = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let rhs = if i == 0 { value.clone() } else { format!("VAR {}", names[i - 1]) };
            needles.push((env.needle("filler", &format!("VAR {name} = {rhs}."))?, depths[i]));
        }
        let (head, tail) = env.frame(
            "Memorize and track the chain(s) of variable assignment hidden in the following text.",
            &format!("Question: Find all variables that are assigned the value {value} in the text above."),
            &format!(
                "Answer: According to the chain(s) of variable assignment in the text above, {} variables are \
                 assigned the value {value}, they are:",
                names.len()
            ),
        )?;
        let mut units = env.units("filler", g)?;
        let (tokens, at) = assemble(&head, &needles, &tail, &mut *units, length)?;
        Ok(Sample { tokens, expected: names, needles: at })
    }
}
