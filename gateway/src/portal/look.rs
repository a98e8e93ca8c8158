//! What the provider makes of the portal: its name, logo, colours and terms of use
//! (`[portal.brand]`), and the languages it speaks (`portal.locales_dir`). Read once at start;
//! [`Look::load`] is also what `check-config` runs, so a file the portal could not use is
//! reported there with its key; `run` logs it and serves without it, so a typo in a
//! translation never keeps the gateway (and everyone's internet) from starting.

use std::path::Path;

use super::i18n::Languages;
use crate::config;

/// The largest logo served: the portal page must load fast on a weak link.
pub const MAX_LOGO_BYTES: u64 = 100 * 1024;
/// The largest terms of use.
pub const MAX_TERMS_BYTES: u64 = 64 * 1024;
/// The longest provider name, in characters.
pub const MAX_NAME_CHARS: usize = 80;

/// Everything the pages show that the provider chose. The default: built-in languages only,
/// no name, logo or terms, the built-in colours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Look {
    pub languages: Languages,
    /// The provider's name, shown at the top of every page and in the titles.
    pub name: Option<String>,
    pub logo: Option<Logo>,
    /// Terms of use, plain text; paragraphs separated by blank lines.
    pub terms: Option<String>,
    /// CSS custom properties for the provider's colours (validated colours only).
    pub colors_css: String,
}

/// The logo, served by the portal at [`super::LOGO_PATH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logo {
    pub bytes: axum::body::Bytes,
    pub content_type: &'static str,
}

/// A colour for the CSS: `#rgb` or `#rrggbb` and nothing else, so a value cannot carry CSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color([u8; 3]);

impl Color {
    pub fn parse(text: &str) -> Option<Color> {
        let hex = text.strip_prefix('#')?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let digit = |i: usize| u8::from_str_radix(&hex[i..=i], 16).ok();
        match hex.len() {
            3 => Some(Color([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17])),
            6 => {
                let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
                Some(Color([byte(0)?, byte(2)?, byte(4)?]))
            }
            _ => None,
        }
    }

    fn css(self) -> String {
        let [r, g, b] = self.0;
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    /// WCAG relative luminance.
    fn luminance(self) -> f64 {
        let channel = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let [r, g, b] = self.0;
        0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    }

    /// Black or white, whichever reads better on this colour.
    fn readable_text(self) -> Color {
        // Contrast with black is (L + 0.05) / 0.05, with white 1.05 / (L + 0.05); they are
        // equal at L = sqrt(1.05 * 0.05) - 0.05 ≈ 0.179.
        if self.luminance() > 0.179 {
            Color([0, 0, 0])
        } else {
            Color([255, 255, 255])
        }
    }
}

impl Look {
    /// The look `portal` describes, and what is wrong with it as (key, message) pairs. What
    /// cannot be used is left at its default (no logo, no terms, the built-in languages
    /// without the bad file), so the portal serves on with the rest.
    pub fn load(portal: &config::Portal) -> (Look, Vec<(String, String)>) {
        let brand = &portal.brand;
        let mut problems = Vec::new();
        let (languages, language_problems) = Languages::load(&portal.locales_dir);
        for (file, message) in language_problems {
            problems.push((
                "portal.locales_dir".to_owned(),
                format!("{file}: {message}"),
            ));
        }
        let name = brand.name.as_ref().and_then(|name| {
            let chars = name.chars().count();
            let problem = if name.trim().is_empty() {
                Some("must not be empty (leave it out for no name)".to_owned())
            } else if chars > MAX_NAME_CHARS {
                Some(format!(
                    "is {chars} characters long (at most {MAX_NAME_CHARS})"
                ))
            } else if name.chars().any(char::is_control) {
                Some("must be one line without control characters".to_owned())
            } else {
                None
            };
            match problem {
                Some(message) => {
                    problems.push(("portal.brand.name".to_owned(), message));
                    None
                }
                None => Some(name.trim().to_owned()),
            }
        });
        let logo = brand
            .logo
            .as_deref()
            .and_then(|path| match read_logo(path) {
                Ok(logo) => Some(logo),
                Err(message) => {
                    problems.push((
                        "portal.brand.logo".to_owned(),
                        format!("{}: {message}", path.display()),
                    ));
                    None
                }
            });
        let terms = match (&brand.terms, &brand.terms_file) {
            (Some(_), Some(_)) => {
                problems.push((
                    "portal.brand.terms_file".to_owned(),
                    "set either portal.brand.terms or portal.brand.terms_file, not both".to_owned(),
                ));
                None
            }
            (Some(text), None) => check_terms(text).map_or_else(
                |message| {
                    problems.push(("portal.brand.terms".to_owned(), message));
                    None
                },
                |()| Some(text.clone()),
            ),
            (None, Some(path)) => match read_terms(path) {
                Ok(text) => Some(text),
                Err(message) => {
                    problems.push((
                        "portal.brand.terms_file".to_owned(),
                        format!("{}: {message}", path.display()),
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        let mut color = |key: &str, value: &Option<String>| {
            let text = value.as_deref()?;
            let parsed = Color::parse(text);
            if parsed.is_none() {
                problems.push((
                    format!("portal.brand.colors.{key}"),
                    format!(
                        "\"{}\" is not a colour like \"#0b4f9c\" or \"#fff\" (#rgb or #rrggbb)",
                        text.escape_debug()
                    ),
                ));
            }
            parsed
        };
        let accent = color("accent", &brand.colors.accent);
        let accent_text = color("accent_text", &brand.colors.accent_text);
        let colors_css = match (accent, accent_text) {
            (None, None) => String::new(),
            (Some(accent), text) => format!(
                ":root{{--brand:{};--on-brand:{}}}",
                accent.css(),
                text.unwrap_or_else(|| accent.readable_text()).css()
            ),
            (None, Some(text)) => format!(":root{{--on-brand:{}}}", text.css()),
        };
        let look = Look {
            languages,
            name,
            logo,
            terms,
            colors_css,
        };
        (look, problems)
    }

    /// The look for the running portal. The configuration's validation has refused any
    /// problem already; one that turns up between (a file changed since) is logged, and the
    /// portal serves with what could be used.
    pub fn from_config(portal: &config::Portal) -> Look {
        let (look, problems) = Look::load(portal);
        for (key, message) in problems {
            tracing::error!(key, problem = message, "portal look: serving without it");
        }
        look
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|err| format!("cannot read: {err}"))?
        .len();
    if size > limit {
        return Err(format!("{size} bytes; at most {limit} are served"));
    }
    std::fs::read(path).map_err(|err| format!("cannot read: {err}"))
}

fn read_logo(path: &Path) -> Result<Logo, String> {
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .map(str::to_ascii_lowercase);
    let content_type = match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        _ => return Err("must be a .png, .jpg or .svg file".to_owned()),
    };
    let bytes = read_limited(path, MAX_LOGO_BYTES)?;
    // The content must be what the name says: browsers are told the type (nosniff).
    let looks_right = match content_type {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xff, 0xd8, 0xff]),
        _ => std::str::from_utf8(&bytes).is_ok_and(|text| text.contains("<svg")),
    };
    if !looks_right {
        return Err(format!("its content is not a {content_type} image"));
    }
    Ok(Logo {
        bytes: bytes.into(),
        content_type,
    })
}

fn check_terms(text: &str) -> Result<(), String> {
    if text.len() as u64 > MAX_TERMS_BYTES {
        return Err(format!("{} bytes; at most {MAX_TERMS_BYTES}", text.len()));
    }
    if text.trim().is_empty() {
        return Err("must not be empty (leave it out for no terms page)".to_owned());
    }
    Ok(())
}

fn read_terms(path: &Path) -> Result<String, String> {
    let bytes = read_limited(path, MAX_TERMS_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    check_terms(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Brand;

    fn portal_with(brand: Brand, locales_dir: &Path) -> config::Portal {
        config::Portal {
            brand,
            locales_dir: locales_dir.to_owned(),
            ..config::Portal::default()
        }
    }

    #[test]
    fn only_hex_colours_pass() {
        assert_eq!(Color::parse("#fff"), Some(Color([255, 255, 255])));
        assert_eq!(Color::parse("#0B4f9c"), Some(Color([0x0b, 0x4f, 0x9c])));
        for bad in [
            "",
            "#",
            "fff",
            "#ffff",
            "#fffffff",
            "#ggg",
            "red",
            "#fff;}",
            "#fff}body{",
            "#12345",
            " #fff",
            "#fff ",
            "#+1f",
            "#é12",
        ] {
            assert_eq!(Color::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Color([0, 0x4f, 0x9c]).readable_text(), Color([255; 3]));
        assert_eq!(Color([0xff, 0xd7, 0]).readable_text(), Color([0; 3]));
    }

    #[test]
    fn each_bad_setting_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("es.toml"), "form.title = [").unwrap();
        std::fs::write(dir.path().join("logo.gif"), "GIF89a").unwrap();
        std::fs::write(dir.path().join("fake.png"), "<svg/>").unwrap();
        let brand = Brand {
            name: Some("A\nB".to_owned()),
            logo: Some(dir.path().join("logo.gif")),
            terms: Some("x".to_owned()),
            terms_file: Some(dir.path().join("terms.txt")),
            colors: config::BrandColors {
                accent: Some("red;}body{display:none".to_owned()),
                accent_text: Some("#fff".to_owned()),
            },
        };
        let (look, problems) = Look::load(&portal_with(brand, dir.path()));
        let keys: Vec<&str> = problems.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "portal.locales_dir",
                "portal.brand.name",
                "portal.brand.logo",
                "portal.brand.terms_file",
                "portal.brand.colors.accent"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].1.contains("es.toml: not valid TOML"),
            "{problems:?}"
        );
        assert!(
            problems[2]
                .1
                .ends_with("logo.gif: must be a .png, .jpg or .svg file")
        );
        assert!(!look.colors_css.contains("red"));
        assert_eq!(look.colors_css, ":root{--on-brand:#ffffff}");
        assert_eq!((look.name, look.logo, look.terms), (None, None, None));

        let brand = Brand {
            logo: Some(dir.path().join("fake.png")),
            ..Brand::default()
        };
        let (_, problems) = Look::load(&portal_with(brand, dir.path()));
        assert!(
            problems[1]
                .1
                .ends_with("fake.png: its content is not a image/png image"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_good_brand_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let logo = dir.path().join("logo.svg");
        std::fs::write(&logo, "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
        let terms = dir.path().join("terms.txt");
        std::fs::write(&terms, "Be nice.\n\nNo spam.").unwrap();
        let brand = Brand {
            name: Some(" Café Sol ".to_owned()),
            logo: Some(logo),
            terms: None,
            terms_file: Some(terms),
            colors: config::BrandColors {
                accent: Some("#FC0".to_owned()),
                accent_text: None,
            },
        };
        let (look, problems) = Look::load(&portal_with(brand, &dir.path().join("none")));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(look.name.as_deref(), Some("Café Sol"));
        assert_eq!(look.logo.unwrap().content_type, "image/svg+xml");
        assert_eq!(look.terms.as_deref(), Some("Be nice.\n\nNo spam."));
        assert_eq!(look.colors_css, ":root{--brand:#ffcc00;--on-brand:#000000}");
    }
}
