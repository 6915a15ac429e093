//! The classification head over pooled embeddings: dropout, an optional
//! hidden layer (GELU), and a linear layer to the label space (leaf paths plus
//! the optional out-of-scope class). Level probabilities are marginals of the
//! leaf-path distribution, so L1/L2/L3 are consistent by construction.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bert::dropout;
use crate::error::{Result, TransformerError};

#[derive(Clone)]
pub(crate) struct Head {
    hidden: Option<(Tensor, Tensor)>,
    out_w: Tensor,
    out_b: Tensor,
    pub dropout: f32,
}

/// PyTorch's `nn.Linear` default init (uniform in ±1/sqrt(fan_in)), drawn
/// from a seeded RNG so the same seed gives the same head.
fn init_linear(
    rng: &mut StdRng,
    fan_in: usize,
    fan_out: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let w: Vec<f32> = (0..fan_in * fan_out)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok((
        Tensor::from_vec(w, (fan_out, fan_in), dev)?,
        Tensor::zeros(fan_out, candle_core::DType::F32, dev)?,
    ))
}

impl Head {
    pub fn init(
        input: usize,
        hidden: Option<usize>,
        n_out: usize,
        dropout: f32,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        // A distinct stream from the shuffling RNG, derived from the seed.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6865_6164_5f69_6e69);
        let (hidden, last_in) = match hidden {
            Some(hd) => (Some(init_linear(&mut rng, input, hd, dev)?), hd),
            None => (None, input),
        };
        let (out_w, out_b) = init_linear(&mut rng, last_in, n_out, dev)?;
        Ok(Self {
            hidden,
            out_w,
            out_b,
            dropout,
        })
    }

    pub fn input_dim(&self) -> usize {
        match &self.hidden {
            Some((w, _)) => w.dims()[1],
            None => self.out_w.dims()[1],
        }
    }

    pub fn n_outputs(&self) -> usize {
        self.out_w.dims()[0]
    }

    /// Logits (b, n_out). Dropout only when an RNG is given (training).
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(r) = rng.as_deref_mut() {
            x = dropout(&x, self.dropout, r)?;
        }
        if self.hidden.is_some() {
            x = self.features(&x)?;
            if let Some(r) = rng {
                x = dropout(&x, self.dropout, r)?;
            }
        }
        self.output(&x)
    }

    /// The output layer alone: logits from what [`Self::features`] gives.
    pub fn output(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features
            .matmul(&self.out_w.t()?)?
            .broadcast_add(&self.out_b)?)
    }

    /// What the output layer reads: the hidden layer's activations, or the
    /// embeddings themselves without one (inference, no dropout).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        match &self.hidden {
            Some((w, b)) => Ok(x.matmul(&w.t()?)?.broadcast_add(b)?.gelu_erf()?),
            None => Ok(x.clone()),
        }
    }

    /// The output layer's rows (one per output) and biases.
    pub fn output_layer(&self) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        Ok((self.out_w.to_vec2()?, self.out_b.to_vec1()?))
    }

    /// Replace the output layer (any number of outputs, the same width).
    pub fn set_output_layer(&mut self, rows: &[Vec<f32>], bias: &[f32]) -> Result<()> {
        let width = self.out_w.dims()[1];
        if rows.len() != bias.len() || rows.iter().any(|r| r.len() != width) {
            return Err(TransformerError::Input(format!(
                "output layer: {} rows of width {width} and as many biases are needed",
                rows.len()
            )));
        }
        let dev = self.out_w.device().clone();
        self.out_w = Tensor::from_vec(rows.concat(), (rows.len(), width), &dev)?;
        self.out_b = Tensor::from_vec(bias.to_vec(), rows.len(), &dev)?;
        Ok(())
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        let mut v = Vec::with_capacity(4);
        if let Some((w, b)) = &mut self.hidden {
            v.push(("hidden.weight", w));
            v.push(("hidden.bias", b));
        }
        v.push(("out.weight", &mut self.out_w));
        v.push(("out.bias", &mut self.out_b));
        v
    }

    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for (n, t) in self.params_mut() {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            out.push((format!("head.{n}"), v));
        }
        Ok(out)
    }

    pub fn freeze(&mut self) {
        for (_, t) in self.params_mut() {
            *t = t.detach();
        }
    }

    pub fn snapshot(&mut self) -> Result<Vec<Tensor>> {
        self.params_mut()
            .into_iter()
            .map(|(_, t)| Ok(t.copy()?.detach()))
            .collect()
    }

    pub fn restore(&mut self, snap: &[Tensor]) {
        for ((_, t), s) in self.params_mut().into_iter().zip(snap) {
            *t = s.clone();
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        if let Some((w, b)) = &self.hidden {
            map.insert("hidden.weight".to_string(), w.detach());
            map.insert("hidden.bias".to_string(), b.detach());
        }
        map.insert("out.weight".to_string(), self.out_w.detach());
        map.insert("out.bias".to_string(), self.out_b.detach());
        crate::error::save_safetensors(&map, path)
    }

    pub fn load(path: &Path, dropout: f32, dev: &Device) -> Result<Self> {
        let bad = |m: String| TransformerError::Model(format!("{}: {m}", path.display()));
        let mut ts = candle_core::safetensors::load(path, dev)
            .map_err(|e| bad(crate::error::one_line(&e.to_string())))?;
        let mut take = |n: &str| {
            ts.remove(n)
                .ok_or_else(|| bad(format!("missing tensor '{n}'")))
        };
        let out_w = take("out.weight")?;
        let out_b = take("out.bias")?;
        let hidden = match (take("hidden.weight"), take("hidden.bias")) {
            (Ok(w), Ok(b)) => Some((w, b)),
            _ => None,
        };
        let head = Self {
            hidden,
            out_w,
            out_b,
            dropout,
        };
        let last_in = match &head.hidden {
            Some((w, b)) => {
                if w.rank() != 2 || b.dims() != [w.dims()[0]] {
                    return Err(bad("hidden layer shapes are inconsistent".into()));
                }
                w.dims()[0]
            }
            None => head.input_dim(),
        };
        if head.out_w.rank() != 2
            || head.out_w.dims()[1] != last_in
            || head.out_b.dims() != [head.out_w.dims()[0]]
        {
            return Err(bad("output layer shapes are inconsistent".into()));
        }
        Ok(head)
    }
}
