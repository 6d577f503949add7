//! A tiny random-init BERT classifier with its own WordPiece vocabulary, and a learnable
//! sentence-pair task for it: what `accel test` trains, and what the tests train for logic.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{PaddingParams, Tokenizer};

use crate::model::{BertConfig, Model, ModelConfig};
use crate::{Error, Result};

/// Words of the tiny vocabulary.
pub const TINY_WORDS: [&str; 24] = [
    "the", "a", "cat", "dog", "bird", "fish", "runs", "sits", "eats", "sleeps", "red", "blue", "big", "small", "on",
    "under", "mat", "tree", "is", "not", "and", "it", "this", "that",
];

/// Writes a tiny random-init BERT classifier (2 labels, [`BertConfig::tiny`]) with a WordPiece
/// tokenizer over [`TINY_WORDS`] into `dir`, in Hugging Face layout.
pub fn tiny_model_dir(dir: &Path, seed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut vocab: Vec<String> =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."].iter().map(|s| s.to_string()).collect();
    vocab.extend(TINY_WORDS.iter().map(|s| s.to_string()));
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n").map_err(|e| Error::io(&vocab_path, e))?;
    let tokenizer_error = |e| Error::tokenizer("building the tiny tokenizer", e);
    let wordpiece = WordPiece::from_file(&vocab_path.display().to_string())
        .unk_token("[UNK]".into())
        .build()
        .map_err(tokenizer_error)?;
    let mut tok = Tokenizer::new(wordpiece);
    tok.with_normalizer(Some(BertNormalizer::default())).map_err(tokenizer_error)?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
        .map_err(|e| Error::Msg(format!("the tiny tokenizer's template: {e}")))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(|e| Error::Msg(format!("the tiny tokenizer's template: {e}")))?;
    tok.with_post_processor(Some(template));
    tok.with_padding(Some(PaddingParams { pad_id: 0, pad_token: "[PAD]".into(), ..PaddingParams::default() }));
    tok.save(dir.join("tokenizer.json"), false).map_err(tokenizer_error)?;
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(&config_path, r#"{"model_max_length": 32, "pad_token": "[PAD]"}"#)
        .map_err(|e| Error::io(&config_path, e))?;
    let model = Model::new(ModelConfig::bert(BertConfig::tiny()), 2, seed, &Device::Cpu)?;
    model.save_pretrained(dir)?;
    Ok(dir.to_path_buf())
}

/// Writes a learnable sentence-pair task as CSV files `train.csv` and `dev.csv` in `dir`: label 1
/// when both sentences share their first word. Returns (train, validation) paths.
pub fn tiny_pair_task(dir: &Path, train_rows: usize, validation_rows: usize) -> Result<(PathBuf, PathBuf)> {
    let mut state = 12345u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut write = |name: &str, rows: usize| -> Result<PathBuf> {
        let mut text = String::from("sentence1,sentence2,label\n");
        for _ in 0..rows {
            let words: Vec<&str> = (0..4).map(|_| TINY_WORDS[next() % TINY_WORDS.len()]).collect();
            let same = next() % 2 == 0;
            let first = if same {
                words[0]
            } else {
                let at = TINY_WORDS.iter().position(|w| *w == words[0]).unwrap_or(0);
                TINY_WORDS[(next() % (TINY_WORDS.len() - 1) + 1 + at) % TINY_WORDS.len()]
            };
            let other: Vec<&str> = (0..3).map(|_| TINY_WORDS[next() % TINY_WORDS.len()]).collect();
            text.push_str(&format!(
                "{} {} {},{} {} {} {} .,{}\n",
                words[0], words[1], words[2], first, other[0], other[1], other[2], same as u8
            ));
        }
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    };
    Ok((write("train.csv", train_rows)?, write("dev.csv", validation_rows)?))
}
