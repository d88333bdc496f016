//! kiln-exporter: snapshot directories → deterministic layer blobs → OCI images, layouts and archives.
//!
//! Layers are built in one streaming pass (walk → tar → sha256 diffID → compressor → sha256
//! digest → blob writer) and never buffered whole. The same tree gives the same bytes in any
//! directory, at any time, on any machine.

mod docker;
mod error;
mod image;
mod image_index;
mod index;
mod layer;
mod layout;
mod pargz;
mod rootfs;
mod stage;
mod store;
mod tarw;
mod variant;

pub use error::ExportError;
pub use image::{fill_rootfs, ImageDescriptor};
pub use image_index::write_image_index;
pub use index::{write_index, PlatformImage};
pub use layer::{
    write_layer_blob, write_layer_diff_tar, write_layer_tar, Compression, LayerBlob, LayerOptions,
};
pub use store::{
    export_layer, save_docker_archive, tag_image, write_docker_archive, write_image,
    write_image_as, write_image_with_extras, write_image_with_fields, write_oci_archive,
    write_oci_dir, write_rootfs, write_rootfs_tar, write_split_rootfs, write_split_rootfs_tar,
    ManifestFormat,
};
pub use variant::{image_variant, layer_variant, VariantOptions};
