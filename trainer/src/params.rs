//! Named access to a module's parameters: collect them to host memory, assign them back, and
//! initialise them from our own seeded generator.
//!
//! burn keys parameters by random ids; checkpoints key them by their dotted module path, which
//! is stable across processes. Loading checks that the names and shapes match exactly — burn
//! would silently re-initialise a parameter it cannot match, which would quietly ruin a resume.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::snapshot::{HostTensor, PendingTensor};

/// A mismatch between a checkpoint and the model.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// The model has a parameter that the checkpoint lacks.
    #[error("checkpoint has no tensor `{0}`")]
    Missing(String),
    /// The checkpoint has a tensor the model does not.
    #[error("checkpoint tensor(s) {0:?} match no model parameter")]
    Unexpected(Vec<String>),
    /// Same name, other shape.
    #[error("tensor `{name}` has shape {found:?}, the model wants {want:?}")]
    Shape {
        /// Parameter name.
        name: String,
        /// Shape in the checkpoint.
        found: Vec<usize>,
        /// Shape in the model.
        want: Vec<usize>,
    },
}

struct Path(Vec<String>);

impl Path {
    fn name(&self) -> String {
        self.0.join(".")
    }
}

struct HandOver {
    path: Path,
    copy_now: bool,
    out: Vec<PendingTensor>,
}

impl<B: Backend> ModuleVisitor<B> for HandOver {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // The handle shares the parameter's buffer; a parameter is a leaf, with no graph.
        let t = param.val();
        self.out.push(PendingTensor::of(
            self.path.name(),
            t.dims().to_vec(),
            t,
            self.copy_now,
        ));
    }
}

/// Hands every parameter over for a checkpoint, in module order (see [`PendingTensor`]).
pub fn hand_over<B: Backend, M: Module<B>>(module: &M, copy_now: bool) -> Vec<PendingTensor> {
    let mut h = HandOver {
        path: Path(Vec::new()),
        copy_now,
        out: Vec::new(),
    };
    module.visit(&mut h);
    h.out
}

/// Copies every parameter to host memory, in module order.
pub fn collect<B: Backend, M: Module<B>>(module: &M) -> Vec<HostTensor> {
    hand_over(module, true)
        .into_iter()
        .map(PendingTensor::into_host)
        .collect()
}

/// The parameter names and shapes, in module order.
pub fn shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes(Path, Vec<(String, Vec<usize>)>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0 .0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0 .0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.1.push((self.0.name(), param.dims().to_vec()));
        }
    }
    let mut s = Shapes(Path(Vec::new()), Vec::new());
    module.visit(&mut s);
    s.1
}

struct Assigner<'a, B: Backend> {
    path: Path,
    tensors: &'a mut BTreeMap<String, HostTensor>,
    device: B::Device,
    error: Option<ParamError>,
}

impl<B: Backend> ModuleMapper<B> for Assigner<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.name();
        let (id, tensor, mapper) = param.consume();
        let want = tensor.dims().to_vec();
        let replaced = match self.tensors.remove(&name) {
            None => Err(ParamError::Missing(name)),
            Some(h) if h.shape != want => Err(ParamError::Shape {
                name,
                found: h.shape,
                want,
            }),
            Some(h) => Ok(Tensor::<B, D>::from_data(h.data, &self.device)),
        };
        let value = match replaced {
            Ok(t) if tensor.is_require_grad() => t.require_grad(),
            Ok(t) => t,
            Err(e) => {
                self.error.get_or_insert(e);
                tensor
            }
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Replaces every parameter by the tensor of the same name; all names and shapes must match.
pub fn assign<B: Backend, M: Module<B>>(
    module: M,
    tensors: Vec<HostTensor>,
    device: &B::Device,
) -> Result<M, ParamError> {
    let mut by_name: BTreeMap<String, HostTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut a = Assigner::<B> {
        path: Path(Vec::new()),
        tensors: &mut by_name,
        device: device.clone(),
        error: None,
    };
    let module = module.map(&mut a);
    if let Some(e) = a.error {
        return Err(e);
    }
    if !by_name.is_empty() {
        return Err(ParamError::Unexpected(by_name.into_keys().collect()));
    }
    Ok(module)
}

/// Fan-in of a weight tensor, for its initialisation bound.
fn fan_in(shape: &[usize]) -> usize {
    match shape {
        // burn's Linear stores [in, out].
        [i, _] => *i,
        // Conv2d stores [out, in, kh, kw].
        [_, rest @ ..] if !rest.is_empty() => rest.iter().product(),
        _ => 1,
    }
}

/// A per-parameter seed, so a parameter's initial value depends only on the run seed and its name.
fn param_seed(seed: u64, name: &str) -> u64 {
    let d = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(name.as_bytes())
        .finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Initial parameter values (Kaiming-uniform weights, zero biases) drawn from our own
/// generator: identical on every backend and every machine for the same seed.
pub fn initial_values(shapes: &[(String, Vec<usize>)], seed: u64) -> Vec<HostTensor> {
    shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if shape.len() == 1 {
                vec![0.0; n]
            } else {
                let bound = (1.0 / fan_in(shape) as f64).sqrt() as f32 * 3f32.sqrt();
                let mut rng = ChaCha8Rng::seed_from_u64(param_seed(seed, name));
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            HostTensor {
                name: name.clone(),
                shape: shape.clone(),
                data: TensorData::new(values, shape.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetConfig;
    use burn::backend::Flex;

    fn cfg() -> NetConfig {
        NetConfig {
            channels: 1,
            height: 8,
            width: 8,
            depth: 1,
            base_width: 2,
            hidden: 3,
            classes: 4,
        }
    }

    #[test]
    fn names_are_stable_dotted_paths() {
        let net = cfg().init::<Flex>(&Default::default());
        let names: Vec<String> = shapes::<Flex, _>(&net)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "blocks.0.weight",
                "blocks.0.bias",
                "hidden.weight",
                "hidden.bias",
                "head.weight",
                "head.bias"
            ]
        );
    }

    #[test]
    fn assign_then_collect_round_trips_exactly() {
        let dev = Default::default();
        let net = cfg().init::<Flex>(&dev);
        let init = initial_values(&shapes::<Flex, _>(&net), 5);
        let net = assign::<Flex, _>(net, init.clone(), &dev).unwrap();
        let back = collect::<Flex, _>(&net);
        for (a, b) in init.iter().zip(&back) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.data.as_bytes(), b.data.as_bytes());
        }
    }

    #[test]
    fn mismatched_checkpoints_fail_loudly() {
        let dev = Default::default();
        let net = cfg().init::<Flex>(&dev);
        let mut vals = initial_values(&shapes::<Flex, _>(&net), 5);
        vals.pop();
        let err = assign::<Flex, _>(net.clone(), vals, &dev).unwrap_err();
        assert!(matches!(err, ParamError::Missing(ref n) if n == "head.bias"));

        let mut vals = initial_values(&shapes::<Flex, _>(&net), 5);
        vals[0].shape = vec![1];
        assert!(matches!(
            assign::<Flex, _>(net.clone(), vals, &dev),
            Err(ParamError::Shape { .. })
        ));

        let mut vals = initial_values(&shapes::<Flex, _>(&net), 5);
        let mut extra = vals[5].clone();
        extra.name = "stray".into();
        vals.push(extra);
        assert!(matches!(
            assign::<Flex, _>(net, vals, &dev),
            Err(ParamError::Unexpected(_))
        ));
    }

    #[test]
    fn initial_values_depend_only_on_seed_and_name() {
        let s = vec![("w".to_string(), vec![3, 2])];
        let a = initial_values(&s, 1);
        assert_eq!(
            a[0].data.as_bytes(),
            initial_values(&s, 1)[0].data.as_bytes()
        );
        assert_ne!(
            a[0].data.as_bytes(),
            initial_values(&s, 2)[0].data.as_bytes()
        );
    }
}
