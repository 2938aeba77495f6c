//! The image classifier: convolution blocks, an optional hidden layer, a linear head.
//!
//! Every learnable tensor has a stable dotted name (`blocks.0.weight`, `head.bias`, …) that
//! checkpoints use as their key; [`crate::params`] walks them.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The architecture, recorded in every checkpoint so a resume into a different shape fails
/// loudly instead of silently re-initialising.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Convolution blocks.
    pub depth: usize,
    /// Channels of the first block (doubled per block).
    pub base_width: usize,
    /// Hidden dense width (0: none).
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

impl NetConfig {
    /// Features entering the dense layers.
    pub fn features(&self) -> usize {
        let (mut h, mut w, mut c) = (self.height, self.width, self.channels);
        for i in 0..self.depth {
            c = self.base_width << i;
            h = (h / 2).max(1);
            w = (w / 2).max(1);
        }
        c * h * w
    }

    /// Builds the network (parameters are re-initialised by [`crate::params::init`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Net<B> {
        let mut blocks = Vec::with_capacity(self.depth);
        let mut c_in = self.channels;
        for i in 0..self.depth {
            let c_out = self.base_width << i;
            blocks.push(
                Conv2dConfig::new([c_in, c_out], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
            );
            c_in = c_out;
        }
        let features = self.features();
        let (hidden, head_in) = if self.hidden > 0 {
            (
                Some(LinearConfig::new(features, self.hidden).init(device)),
                self.hidden,
            )
        } else {
            (None, features)
        };
        Net {
            blocks,
            hidden,
            head: LinearConfig::new(head_in, self.classes).init(device),
        }
    }
}

/// The classifier.
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    blocks: Vec<Conv2d<B>>,
    hidden: Option<Linear<B>>,
    head: Linear<B>,
}

impl<B: Backend> Net<B> {
    /// Logits for a batch of N×C×H×W images.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = images;
        for conv in &self.blocks {
            x = relu(conv.forward(x));
            let [_, _, h, w] = x.dims();
            if h >= 2 && w >= 2 {
                x = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        let x: Tensor<B, 2> = x.flatten(1, 3);
        let x = match &self.hidden {
            Some(l) => relu(l.forward(x)),
            None => x,
        };
        self.head.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_count_follows_the_pooling() {
        let c = NetConfig {
            channels: 1,
            height: 28,
            width: 28,
            depth: 2,
            base_width: 32,
            hidden: 128,
            classes: 10,
        };
        assert_eq!(c.features(), 64 * 7 * 7);
        let flat = NetConfig { depth: 0, ..c };
        assert_eq!(flat.features(), 28 * 28);
    }
}
