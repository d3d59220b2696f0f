//! `msrnn eval merge`: joins the `--out` files of a grid's shards (`msrnn_eval::merge`) into the
//! document an unsharded run writes, then prints its table and draws its pictures.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use msrnn_eval::AnyDocument;

use super::{cli_error, Pictures};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' result files (written by `msrnn eval TASK --shard I/N --out FILE`).
    #[arg(value_name = "FILES", required = true)]
    files: Vec<PathBuf>,

    /// Write the merged result (the same schema, without a shard) as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Draw the task's chart: .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,

    /// Draw the task's heatmap (passkey, ruler): .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    heatmap: Vec<PathBuf>,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let pictures = Pictures { plot: a.plot.clone(), heatmap: a.heatmap.clone() };
    pictures.check()?;
    let docs = a
        .files
        .iter()
        .map(|f| Ok((f.display().to_string(), AnyDocument::read(f).map_err(cli_error)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut doc = msrnn_eval::merge(&docs).map_err(cli_error)?;
    let n = match &mut doc {
        AnyDocument::Ppl(d) => {
            d.run.command = crate::report::command_line();
            d.results.len()
        }
        AnyDocument::Passkey(d) => {
            d.run.command = crate::report::command_line();
            d.results.len()
        }
        AnyDocument::Ruler(d) => {
            d.run.command = crate::report::command_line();
            d.results.len()
        }
    };
    eprintln!("merged {} files: {n} cells", docs.len());
    super::finish(&doc, a.out.as_deref(), &pictures)
}
