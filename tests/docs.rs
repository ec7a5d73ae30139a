//! The README's request-path picture says what `Gateway::build_stack` does:
//! the same stages, in the same order. A stage added, removed or moved in
//! one and not the other fails here.

use std::path::Path;

/// The stages `build_stack` layers, outermost first, as named in app.rs.
fn stack_in_code() -> Vec<String> {
    let app = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/app.rs"))
        .expect("src/app.rs");
    let start = app
        .find("fn build_stack")
        .expect("build_stack in src/app.rs");
    let body = &app[start..];
    let end = body.find("\n    }\n").expect("the end of build_stack");
    let mut stages = Vec::new();
    for line in body[..end].lines().map(str::trim) {
        let name = line
            .strip_prefix(".layer(")
            .or_else(|| line.strip_prefix(".service("))
            .map(|rest| rest.split(['(', ')', ':']).next().unwrap_or(rest));
        if let Some(name) = name {
            let name = name.trim_end_matches("Layer").trim_end_matches("Service");
            stages.push(words(name));
        }
    }
    stages
}

/// `RateLimit` → `rate limit`.
fn words(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The stages of the README's picture, in order: each `─► name` of the
/// code block under "How a request flows" (the listener excepted).
fn stack_in_readme() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("## How a request flows")
        .nth(1)
        .expect("a 'How a request flows' section");
    let picture = section
        .split("```")
        .nth(1)
        .expect("a picture in that section");
    picture
        .split('─')
        .skip(1)
        .filter_map(|part| part.strip_prefix("► "))
        .map(|part| {
            part.split(|c: char| !(c.is_ascii_alphabetic() || c == ' '))
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn the_readme_picture_lists_the_stages_build_stack_layers_in_order() {
    let code = stack_in_code();
    assert!(
        code.len() >= 10,
        "too few stages found in build_stack: {code:?}"
    );
    let readme = stack_in_readme();
    // The picture names each stage by the words of its type, possibly with
    // more after them ("request id + access log").
    let mut pictured = readme.iter();
    for stage in &code {
        assert!(
            pictured.any(|p| p.starts_with(stage.as_str())),
            "build_stack layers {stage:?}, which the README's picture does not show \
             in this place (picture: {readme:?}; code: {code:?})"
        );
    }
    assert_eq!(
        readme.len(),
        code.len(),
        "the picture shows stages build_stack does not layer: picture {readme:?}, code {code:?}"
    );
}
