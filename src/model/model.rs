//! Model: a family's encoder with the head of a task (transformers' `AutoModelForSequenceClassification`,
//! `...ForTokenClassification`, `...ForQuestionAnswering`), its scores, and the loss transformers
//! picks: mean cross-entropy over sequences (mean squared error for one output, a regression), over
//! labelled tokens, or the mean of the answer's start and end cross-entropies.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

use super::builder::ParamBuilder;
use super::config::ModelConfig;
use super::dropout::{DropoutRng, DropoutRngState};
use super::encoder::Encoder;
use super::head::ClassificationHead;
use super::params::Params;
use super::token_head::TokenHead;
use super::weights::WeightFiles;
use crate::config::Task;
use crate::data::collate::{Spans, TokenLabels};
use crate::data::Batch;
use crate::{bail, Error, Result};

/// Logits, and the loss when the batch has labels (transformers' `SequenceClassifierOutput`).
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub logits: Tensor,
    pub loss: Option<Tensor>,
}

impl ModelOutput {
    /// The loss, or an error saying the batch had no labels.
    pub fn loss(&self) -> Result<&Tensor> {
        self.loss.as_ref().ok_or_else(|| Error::Msg("the batch has no labels, so there is no loss".into()))
    }
}

/// A family's encoder with a sequence classification head; parameter names are transformers'
/// (`bert.*`, `roberta.*`, ..., and the head's).
///
/// The model owns a [`DropoutRng`] (seeded from the construction seed) that [`forward`] uses when
/// `train` is true; a trainer tells it where each forward pass's rows sit in the step's global batch.
///
/// [`forward`]: Model::forward
// https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/auto/modeling_auto.py (AutoModelForSequenceClassification)
#[derive(Debug)]
pub struct Model {
    encoder: Encoder,
    head: Head,
    task: Task,
    params: Params,
    config: ModelConfig,
    device: Device,
    dropout_rng: Mutex<DropoutRng>,
}

/// The head of the model's task.
#[derive(Debug, Clone)]
enum Head {
    /// Logits [batch, labels].
    Sequence(ClassificationHead),
    /// Scores [batch, seq, outputs]: a tag's, or an answer's start and end.
    Tokens(TokenHead),
}

impl Head {
    fn load(pb: &ParamBuilder, config: &ModelConfig, task: Task, num_labels: usize) -> Result<Self> {
        Ok(match task {
            Task::SequenceClassification => Self::Sequence(ClassificationHead::load(pb, config, num_labels)?),
            _ => Self::Tokens(TokenHead::load(pb, config, task, num_labels)?),
        })
    }

    fn names(&self) -> &[String] {
        match self {
            Self::Sequence(h) => h.names(),
            Self::Tokens(h) => h.names(),
        }
    }

    fn outputs(&self) -> usize {
        match self {
            Self::Sequence(h) => h.num_labels(),
            Self::Tokens(h) => h.outputs(),
        }
    }

    fn detached(&self) -> Self {
        match self {
            Self::Sequence(h) => Self::Sequence(h.detached()),
            Self::Tokens(h) => Self::Tokens(h.detached()),
        }
    }

    fn forward(
        &self,
        xs: &Tensor,
        rows: &super::packing::TokenRows,
        attention_mask: &Tensor,
        rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        match self {
            Self::Sequence(h) => h.forward(xs, rows, attention_mask, rng),
            Self::Tokens(h) => h.forward(xs, rows, rng),
        }
    }
}

/// What [`Model::build`] made: the model, the parameters it initialized (sorted), and which of
/// those belong to the encoder rather than the head.
pub(crate) struct Built {
    pub model: Model,
    pub missing: Vec<String>,
    pub missing_in_encoder: Vec<String>,
}

impl Model {
    /// A sequence classifier with every parameter freshly initialized from `seed` (transformers'
    /// `_init_weights`).
    pub fn new(config: ModelConfig, num_labels: usize, seed: u64, device: &Device) -> Result<Self> {
        Self::new_for(Task::SequenceClassification, config, num_labels, seed, device)
    }

    /// A model for `task` with every parameter freshly initialized from `seed`; `num_labels` is the
    /// tags' or classes' count (2 for question answering: a start and an end score).
    pub fn new_for(task: Task, config: ModelConfig, num_labels: usize, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self::build(config, task, num_labels, seed, device, None)?.model)
    }

    /// Builds the model, taking each parameter from `checkpoint` when it has it and initializing the
    /// rest from `seed`.
    pub(crate) fn build(
        mut config: ModelConfig,
        task: Task,
        num_labels: usize,
        seed: u64,
        device: &Device,
        checkpoint: Option<&WeightFiles>,
    ) -> Result<Built> {
        match task {
            Task::SequenceClassification if num_labels == 0 => {
                bail!("num_labels must be 1 (regression) or at least 2 (classification)")
            }
            Task::TokenClassification if num_labels < 2 => bail!("token classification needs at least 2 tags"),
            Task::QuestionAnswering if num_labels != 2 => {
                bail!("question answering scores a start and an end: 2 outputs, not {num_labels}")
            }
            _ => {}
        }
        config.validate()?;
        config.labels_mut().set_num_labels(num_labels);
        let extra = config.extra_mut();
        if task != Task::SequenceClassification {
            extra.remove("problem_type");
        } else if num_labels == 1 {
            // What transformers records on a regression head's first loss, so that it loads as one.
            extra.insert("problem_type".into(), "regression".into());
        } else if extra.get("problem_type").and_then(|v| v.as_str()) != Some("single_label_classification") {
            // Trained with cross-entropy: a regression or multi-label marker would mislead transformers.
            extra.remove("problem_type");
        }
        let pb = ParamBuilder::new(checkpoint, seed, config.initializer_range(), device);
        let encoder = Encoder::load(&pb.pp(config.family().base_prefix()), &config)?;
        let head = Head::load(&pb, &config, task, num_labels)?;
        let (params, missing) = pb.finish()?;
        let missing_in_encoder = missing.iter().filter(|n| !head.names().contains(n)).cloned().collect();
        let model = Self {
            encoder,
            head,
            task,
            params,
            config,
            device: device.clone(),
            dropout_rng: Mutex::new(DropoutRng::new(seed)),
        };
        Ok(Built { model, missing, missing_in_encoder })
    }

    /// The parameters of the model `config` describes whose exact gradient is zero whatever the data
    /// (attention's key biases in most families): what training moves there is rounding noise.
    pub fn zero_gradient_parameters(config: &ModelConfig) -> Result<Vec<String>> {
        let shapes = Self::parameter_shapes(config, config.num_labels().unwrap_or(2))?;
        Ok(shapes.into_iter().map(|(name, _)| name).filter(|n| super::encoder::zero_gradient(config, n)).collect())
    }

    /// As [`Self::zero_gradient_parameters`] for `task`'s head. Question answering's scores are a
    /// softmax over a window's positions, so what adds the same to every position has no gradient
    /// either: the output layer's bias, and the bias of the norm that feeds it (the last layer's
    /// output LayerNorm, or ModernBERT's head norm).
    pub fn zero_gradient_parameters_for(task: Task, config: &ModelConfig) -> Result<Vec<String>> {
        let mut zero = Self::zero_gradient_parameters(config)?;
        if task != Task::QuestionAnswering {
            return Ok(zero);
        }
        let names: Vec<String> = Self::parameter_shapes_for(task, config, 2)?.into_iter().map(|(n, _)| n).collect();
        let layer_of = |n: &str| -> Option<usize> {
            let rest = &n[n.find("layer.")? + "layer.".len()..];
            rest.split('.').next()?.parse().ok()
        };
        let last_norm = names
            .iter()
            .filter(|n| {
                (n.ends_with(".output.LayerNorm.bias") && !n.contains(".attention."))
                    || n.ends_with(".output_layer_norm.bias")
            })
            .max_by_key(|n| layer_of(n));
        let head_norm = names.iter().find(|n| *n == "head.norm.bias");
        let norm = if config.family() == super::Family::ModernBert { head_norm } else { last_norm };
        let output = names.iter().find(|n| *n == "qa_outputs.bias" || *n == "classifier.bias");
        zero.extend(norm.into_iter().chain(output).cloned());
        Ok(zero)
    }

    /// The names and shapes of the parameters of the model `config` describes with `num_labels`
    /// outputs, sorted by name, without allocating them.
    pub fn parameter_shapes(config: &ModelConfig, num_labels: usize) -> Result<Vec<(String, Vec<usize>)>> {
        Self::parameter_shapes_for(Task::SequenceClassification, config, num_labels)
    }

    /// As [`Self::parameter_shapes`] with `task`'s head.
    pub fn parameter_shapes_for(
        task: Task,
        config: &ModelConfig,
        num_labels: usize,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        config.validate()?;
        let pb = ParamBuilder::plan();
        Encoder::load(&pb.pp(config.family().base_prefix()), config)?;
        match task {
            Task::SequenceClassification => {
                ClassificationHead::load(&pb, config, num_labels)?;
            }
            _ => {
                TokenHead::load(&pb, config, task, num_labels)?;
            }
        }
        Ok(pb.planned())
    }

    /// Logits [batch, num_labels] for [batch, seq] integer inputs. `train` turns dropout on, drawing
    /// masks from the model's own [`DropoutRng`]; with `train == false` the output is deterministic.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        if train {
            let mut rng = self.lock_rng();
            self.forward_with_rng(input_ids, token_type_ids, attention_mask, Some(&mut rng))
        } else {
            self.forward_with_rng(input_ids, token_type_ids, attention_mask, None)
        }
    }

    /// As [`forward`](Self::forward), with dropout drawn from `rng` when it is given (training) and
    /// off when it is `None` (evaluation).
    pub fn forward_with_rng(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        if let Some(rng) = rng.as_deref_mut() {
            rng.begin_forward();
        }
        let pack = self.packs();
        let (xs, rows) = self.encoder.encode(input_ids, token_type_ids, attention_mask, pack, rng.as_deref_mut())?;
        self.head.forward(&xs, &rows, attention_mask, rng)
    }

    /// Whether the encoder may skip padding: not for question answering, whose start and end
    /// scores are a softmax over every position of the padded window, padding included, as in
    /// transformers.
    fn packs(&self) -> bool {
        self.task != Task::QuestionAnswering
    }

    /// Training-mode forward (dropout on) on a collated batch, with the loss when it has labels:
    /// `model(**batch)` after `model.train()`.
    pub fn forward_train(&self, batch: &Batch) -> Result<ModelOutput> {
        let logits = self.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, true)?;
        let loss = self.batch_loss(&logits, batch)?;
        Ok(ModelOutput { logits, loss })
    }

    /// The loss of `logits` (this model's) against `batch`'s labels, if it has them for the task.
    pub fn batch_loss(&self, logits: &Tensor, batch: &Batch) -> Result<Option<Tensor>> {
        Ok(match self.task {
            Task::SequenceClassification => match (&batch.labels, batch.max_label) {
                (Some(labels), Some(max)) if !self.is_regression() => Some(self.class_loss(logits, labels, max)?),
                (Some(labels), _) => Some(self.loss(logits, labels)?),
                (None, _) => None,
            },
            Task::TokenClassification => batch.token_labels.as_ref().map(|l| token_loss(logits, l)).transpose()?,
            Task::QuestionAnswering => batch.spans.as_ref().map(|s| span_loss(logits, s)).transpose()?,
        })
    }

    /// Logits in evaluation mode (dropout off) computed without recording an autograd graph, so
    /// each activation is freed as soon as it has been read. For evaluation and prediction.
    pub fn forward_inference(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let encoder = self.encoder.detached();
        let (xs, rows) = encoder.encode(input_ids, token_type_ids, attention_mask, self.packs(), None)?;
        self.head.detached().forward(&xs, &rows, attention_mask, None)
    }

    /// The encoder's last hidden states in evaluation mode, [batch, seq, hidden] (transformers'
    /// `last_hidden_state`); where the encoder skipped padding, padding positions hold zeros.
    pub fn last_hidden_state(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let encoder = self.encoder.detached();
        let (xs, rows) = encoder.encode(input_ids, token_type_ids, attention_mask, self.packs(), None)?;
        rows.unpad(&xs)
    }

    /// The loss transformers computes: with one output (regression), the mean squared error of
    /// `logits` [batch, 1] against `labels` [batch] (f32 targets); otherwise the mean cross-entropy
    /// against `labels` [batch] (u32 class ids).
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        if self.is_regression() {
            mse_loss(logits, labels)
        } else {
            cross_entropy_loss(logits, labels)
        }
    }

    /// The mean cross-entropy against class ids whose largest, `max_label`, the caller knows: the
    /// range is checked on the host, with no read of the labels back from their device.
    pub fn class_loss(&self, logits: &Tensor, labels: &Tensor, max_label: u32) -> Result<Tensor> {
        cross_entropy_with_max(logits, labels, max_label)
    }

    /// Whether the head is a sequence classifier with one output: a regression.
    pub fn is_regression(&self) -> bool {
        self.task == Task::SequenceClassification && self.classifier_width() == 1
    }

    /// What the model was built to predict.
    pub fn task(&self) -> Task {
        self.task
    }

    /// All trainable parameters, sorted by name.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Parameters outside the embeddings: what a model FLOP count multiplies (6 per parameter and
    /// token for a forward and backward pass).
    pub fn nonembedding_parameters(&self) -> u64 {
        self.params.iter().filter(|(n, _)| !is_embedding(n)).map(|(_, v)| v.elem_count() as u64).sum()
    }

    /// The configuration, with `id2label`/`label2id` set for this model's labels.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter names of the classification head (a bare encoder's checkpoint lacks them).
    pub(crate) fn head_names(&self) -> &[String] {
        self.head.names()
    }

    /// transformers' class name for this model (`RobertaForSequenceClassification`).
    pub fn class_name(&self) -> String {
        self.config.family().class_name(self.task.class_suffix())
    }

    pub fn num_labels(&self) -> usize {
        self.classifier_width()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Where the model's dropout stream stands (for a checkpoint).
    pub fn dropout_rng_state(&self) -> DropoutRngState {
        self.lock_rng().state()
    }

    /// Replaces the model's dropout generator, e.g. with one restored from a checkpoint.
    pub fn set_dropout_rng(&self, rng: DropoutRng) {
        *self.lock_rng() = rng;
    }

    /// Places the rows of the next training forward pass for dropout: optimizer step `step`, first
    /// row at `row_offset` in the step's global batch. Every rank and micro-batch that sets its
    /// place this way draws the masks one process with the whole batch would.
    pub fn set_dropout_position(&self, step: u64, row_offset: u64) {
        self.lock_rng().set_position(step, row_offset);
    }

    fn classifier_width(&self) -> usize {
        self.head.outputs()
    }

    fn lock_rng(&self) -> MutexGuard<'_, DropoutRng> {
        // A panic elsewhere cannot leave the generator half-updated, so a poisoned lock is still usable.
        self.dropout_rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `name` is an embedding table (or its LayerNorm), which a FLOP count leaves out: tables
/// are read by index, not multiplied.
fn is_embedding(name: &str) -> bool {
    name.contains("embeddings.") && !name.contains("embeddings_project")
}

/// Token classification's loss: the mean cross-entropy of `logits` [batch, seq, tags] over the
/// tokens `labels` weighs (transformers' `CrossEntropyLoss` ignoring the label -100).
pub fn token_loss(logits: &Tensor, labels: &TokenLabels) -> Result<Tensor> {
    let (b, l, tags) = logits.dims3()?;
    if labels.ids.dims() != [b, l] {
        bail!(
            "token labels have shape {:?}, expected [{b}, {l}] to match logits {:?}",
            labels.ids.dims(),
            logits.dims()
        );
    }
    if labels.max as usize >= tags {
        bail!("tag {} is out of range for {tags} tags", labels.max);
    }
    let log_probs = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = log_probs.gather(&labels.ids.unsqueeze(2)?.contiguous()?, 2)?.squeeze(2)?;
    let total = (picked * &labels.weights)?.sum_all()?;
    Ok((total.neg()? / labels.count.max(1) as f64)?)
}

/// Question answering's loss: the mean of the cross-entropies of the start and end scores
/// (`logits` [batch, seq, 2]) against each window's answer positions; a position past the window
/// is left out, as transformers clamps it to its ignored index.
pub fn span_loss(logits: &Tensor, spans: &Spans) -> Result<Tensor> {
    let (b, l, two) = logits.dims3()?;
    if two != 2 || spans.start.dims() != [b] || spans.end.dims() != [b] {
        bail!("question answering needs logits [{b}, seq, 2] and positions [{b}], got {:?}", logits.dims());
    }
    let side = |k: usize, positions: &Tensor| -> Result<Tensor> {
        let scores = logits.narrow(2, k, 1)?.squeeze(2)?;
        let log_probs = candle_nn::ops::log_softmax(&scores, candle_core::D::Minus1)?;
        let inside = positions.lt(l as f64)?;
        let clamped = inside.where_cond(positions, &positions.zeros_like()?)?;
        let picked = log_probs.gather(&clamped.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)?;
        let weights = inside.to_dtype(DType::F32)?;
        let count = weights.sum_all()?.maximum(1.0)?;
        Ok((picked * weights)?.sum_all()?.neg()?.div(&count)?)
    };
    Ok(((side(0, &spans.start)? + side(1, &spans.end)?)? / 2.0)?)
}

/// Mean squared error between `logits` [batch, 1] and `targets` [batch].
pub fn mse_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, outputs) = logits.dims2()?;
    if outputs != 1 || targets.dims() != [b] {
        bail!("regression needs logits [{b}, 1] and targets [{b}], got {:?} and {:?}", logits.dims(), targets.dims());
    }
    let diff = (logits.squeeze(1)? - targets.to_dtype(logits.dtype())?)?;
    Ok(diff.sqr()?.mean_all()?)
}

/// Mean cross-entropy between `logits` [batch, classes] and `labels` [batch] (class ids). The
/// label range is checked by reading the labels' maximum (a wait for their device).
pub fn cross_entropy_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let largest = labels.to_dtype(DType::U32)?.flatten_all()?.max(0)?.to_scalar::<u32>()?;
    cross_entropy_with_max(logits, labels, largest)
}

/// [`cross_entropy_loss`] with the largest class id in `labels` already known.
fn cross_entropy_with_max(logits: &Tensor, labels: &Tensor, largest: u32) -> Result<Tensor> {
    let (b, classes) = logits.dims2()?;
    if labels.dims() != [b] {
        bail!("labels have shape {:?}, expected [{b}] to match logits {:?}", labels.dims(), logits.dims());
    }
    if largest as usize >= classes {
        bail!("label {largest} is out of range for {classes} classes");
    }
    Ok(candle_nn::loss::cross_entropy(logits, &labels.to_dtype(DType::U32)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_is_the_mean_squared_difference_and_checks_shapes() {
        let logits = Tensor::new(&[[1.0f32], [3.0], [-1.0]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0.5f32, 3.0, 1.0], &Device::Cpu).unwrap();
        let loss = mse_loss(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - (0.25 + 0.0 + 4.0) / 3.0).abs() < 1e-6, "{loss}");
        let two = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(mse_loss(&two, &targets).unwrap_err().to_string().contains("regression needs logits"));
    }
}
