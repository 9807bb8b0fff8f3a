//! Sizes as users write them (`64M`, `1G`): shared with `Kiln.toml`'s `memory`, so both read sizes alike.

pub use kiln_image::size::{human, parse_size};
