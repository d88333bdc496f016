//! The body of the fuzz target (`frontend/fuzz`, `cargo fuzz run parse_compile`) and of the
//! bounded random-input test in the normal suite: any input is parsed and, when it parses,
//! compiled against a resolver that knows every image. Errors are fine; a panic, an invalid
//! graph or an error that does not render is a bug.

use crate::{compile, BuildOptions, ImageResolver, ResolvedImage};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        if reference.starts_with("missing") {
            return Err("manifest unknown".into());
        }
        Ok(ResolvedImage {
            reference: format!("docker.io/library/{reference}"),
            config: oci_spec::image::ImageConfiguration::default(),
            raw_config: serde_json::Value::Null,
        })
    }
}

/// Parses and compiles `data` (lossily decoded as UTF-8); panics only on a real bug.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(df) = crate::parse(&text) {
        let _ = df.dump();
    }
    match compile(&text, &BuildOptions::default(), &AnyImage) {
        Ok(c) => {
            if let Err(e) = c.definition.validate() {
                panic!("compiled an invalid graph: {e}\n--- input ---\n{text}");
            }
            let _ = c.definition.to_json();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
