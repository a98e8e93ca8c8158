//! Printable vouchers: a sheet of cards, one per code, that a provider prints and hands
//! out. Each card carries the code, its data and validity, and two QR codes: one that joins
//! the Wi-Fi (the `WIFI:` URI phones' cameras understand) and one that opens the portal
//! with the code filled in (`/?code=…`, see the portal's form). Pure: the caller gives the
//! codes and settings and writes the HTML where it likes (`codes create --print FILE`).
//!
//! The sheet is one self-contained HTML file (inline SVG, no script, no fetch), so it
//! prints from any browser, also on a Pi without internet.

use std::fmt::Write as _;

use edgeshare_shared::code::AccessCode;
use qrcode::{Color, QrCode};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::portal::escape;

/// Modules of white around a QR code, as the standard asks (readers need it).
const QUIET_ZONE: usize = 4;

/// One code to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Voucher {
    pub code: AccessCode,
    /// Its data allowance, in MB (2^20 bytes).
    pub mb: f64,
    /// When it expires; `None`: never.
    pub expires: Option<OffsetDateTime>,
}

/// What every card of a sheet shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sheet {
    /// The provider's name (`portal.brand.name`).
    pub provider: Option<String>,
    /// The Wi-Fi network to join (`portal.ssid`); without it the card has no Wi-Fi QR code.
    pub ssid: Option<String>,
    /// The portal's address, e.g. `http://10.66.0.1:8080/`.
    pub portal_url: String,
}

/// The `WIFI:` URI of an open network (the portal is the gate, so there is no password):
/// `\`, `;`, `,`, `"` and `:` escaped with a backslash, as the format asks.
pub fn wifi_uri(ssid: &str) -> String {
    let mut escaped = String::with_capacity(ssid.len());
    for c in ssid.chars() {
        if matches!(c, '\\' | ';' | ',' | '"' | ':') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("WIFI:T:nopass;S:{escaped};;")
}

/// The portal's address with the code filled in.
pub fn portal_link(portal_url: &str, code: &AccessCode) -> String {
    let base = portal_url.trim_end_matches('/');
    format!("{base}/?code={}", code.as_str())
}

/// The printable sheet: HTML, every text escaped.
pub fn sheet(sheet: &Sheet, vouchers: &[Voucher]) -> Result<String, qrcode::types::QrError> {
    let provider = sheet.provider.as_deref().map(escape);
    let title = provider.as_deref().unwrap_or("Internet access");
    let mut cards = String::new();
    for voucher in vouchers {
        let mut codes = String::new();
        if let Some(ssid) = &sheet.ssid {
            let _ = write!(
                codes,
                "<figure>{}<figcaption>1. Join the Wi-Fi<br><b>{}</b></figcaption></figure>",
                qr_svg(&wifi_uri(ssid))?,
                escape(ssid)
            );
        }
        let step = if sheet.ssid.is_some() { "2. " } else { "" };
        let _ = write!(
            codes,
            "<figure>{}<figcaption>{step}Open the portal<br>(code filled in)</figcaption></figure>",
            qr_svg(&portal_link(&sheet.portal_url, &voucher.code))?
        );
        let _ = writeln!(
            cards,
            "<section class=\"card\"><h2>{title}</h2>\
             <p class=\"code\">{code}</p>\
             <p>{data} · {valid}</p>\
             <div class=\"qr\">{codes}</div>\
             <p class=\"how\">Or join the network, open any web page and enter the code at {url}</p>\
             </section>",
            code = grouped(&voucher.code),
            data = data_text(voucher.mb),
            valid = validity_text(voucher.expires),
            url = escape(&sheet.portal_url),
        );
    }
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}: vouchers</title><style>{STYLE}</style></head>\n<body>\n{cards}</body></html>\n"
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;display:flex;flex-wrap:wrap}\
.card{box-sizing:border-box;width:50%;padding:6mm;border:1px dashed #999;break-inside:avoid}\
h2{font-size:14pt;margin:0 0 2mm}.code{font:bold 22pt monospace;letter-spacing:.1em;margin:2mm 0}\
.qr{display:flex;gap:4mm}figure{margin:0;text-align:center;font-size:9pt}\
svg{width:32mm;height:32mm}.how{font-size:8pt;color:#444}\
@media print{@page{size:A4;margin:8mm}}@media (max-width:600px){.card{width:100%}}";

/// `ABCD2345` as `ABCD-2345`: easier to read out and type (the portal ignores the dash).
fn grouped(code: &AccessCode) -> String {
    let text = code.as_str();
    let (head, tail) = text.split_at(text.len() / 2);
    format!("{head}-{tail}")
}

fn data_text(mb: f64) -> String {
    if mb >= 1024.0 {
        format!("{:.1} GB", mb / 1024.0)
    } else {
        format!("{mb:.0} MB")
    }
}

fn validity_text(expires: Option<OffsetDateTime>) -> String {
    match expires {
        None => "no expiry".to_owned(),
        Some(at) => {
            let when = at
                .format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
                .unwrap_or_else(|_| "?".to_owned());
            format!("valid until {when} UTC")
        }
    }
}

/// A QR code as inline SVG: one path of dark modules, each row's runs as rectangles.
fn qr_svg(text: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(text.as_bytes())?;
    let width = code.width();
    let colors = code.to_colors();
    let mut path = String::new();
    for (y, row) in colors.chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            if row[x] == Color::Dark {
                let start = x;
                while x < width && row[x] == Color::Dark {
                    x += 1;
                }
                let _ = write!(
                    path,
                    "M{},{}h{}v1h-{}z",
                    start + QUIET_ZONE,
                    y + QUIET_ZONE,
                    x - start,
                    x - start
                );
            } else {
                x += 1;
            }
        }
    }
    let size = width + 2 * QUIET_ZONE;
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" \
         shape-rendering=\"crispEdges\" role=\"img\"><rect width=\"{size}\" height=\"{size}\" \
         fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every QR code of an SVG made by [`qr_svg`] back, by rasterising its path.
    fn decode(svg: &str) -> String {
        let size: usize = svg
            .split("viewBox=\"0 0 ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("a viewBox");
        let path = svg
            .split(" d=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a path");
        let mut dark = vec![false; size * size];
        for rect in path.split('M').filter(|r| !r.is_empty()) {
            let numbers: Vec<usize> = rect
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().unwrap())
                .collect();
            let (x, y, len) = (numbers[0], numbers[1], numbers[2]);
            for i in x..x + len {
                dark[y * size + i] = true;
            }
        }
        let scale = 4;
        let mut image =
            rqrr::PreparedImage::prepare_from_bitmap(size * scale, size * scale, |x, y| {
                dark[(y / scale) * size + x / scale]
            });
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code");
        grids[0].decode().expect("decodes").1
    }

    fn code(text: &str) -> AccessCode {
        AccessCode::parse(text).unwrap()
    }

    #[test]
    fn wifi_uris_escape_what_the_format_reserves() {
        assert_eq!(wifi_uri("edgeshare"), "WIFI:T:nopass;S:edgeshare;;");
        assert_eq!(
            wifi_uri(r#"a;b,c:d"e\f"#),
            r#"WIFI:T:nopass;S:a\;b\,c\:d\"e\\f;;"#
        );
    }

    #[test]
    fn the_qr_codes_read_back_as_the_wifi_uri_and_the_portal_link() {
        let sheet_settings = Sheet {
            provider: Some("Café <Ada>".to_owned()),
            ssid: Some("edge;share".to_owned()),
            portal_url: "http://10.66.0.1:8080/".to_owned(),
        };
        let voucher = Voucher {
            code: code("ABCD2345"),
            mb: 500.0,
            expires: Some(time::macros::datetime!(2026-12-05 08:10 UTC)),
        };
        let html = sheet(&sheet_settings, std::slice::from_ref(&voucher)).unwrap();
        let svgs: Vec<&str> = html.split("<svg").skip(1).collect();
        assert_eq!(svgs.len(), 2);
        assert_eq!(decode(svgs[0]), r"WIFI:T:nopass;S:edge\;share;;");
        assert_eq!(decode(svgs[1]), "http://10.66.0.1:8080/?code=ABCD2345");
        assert!(html.contains("ABCD-2345"));
        assert!(html.contains("500 MB · valid until 2026-12-05 08:10 UTC"));
        assert!(html.contains("Café &lt;Ada&gt;") && !html.contains("<Ada>"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn without_an_ssid_a_card_has_the_portal_qr_code_only() {
        let settings = Sheet {
            provider: None,
            ssid: None,
            portal_url: "http://10.66.0.1:8080".to_owned(),
        };
        let vouchers: Vec<Voucher> = ["ABCD2345", "EFGH6789"]
            .iter()
            .map(|c| Voucher {
                code: code(c),
                mb: 2048.0,
                expires: None,
            })
            .collect();
        let html = sheet(&settings, &vouchers).unwrap();
        assert_eq!(html.matches("<section class=\"card\">").count(), 2);
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains("2.0 GB · no expiry"));
        let second = html.split("<svg").nth(2).unwrap();
        assert_eq!(decode(second), "http://10.66.0.1:8080/?code=EFGH6789");
    }
}
