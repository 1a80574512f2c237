//! The SVG plot of a result's performance profiles: one step line per method, axes with ticks
//! and labels, and a legend ordered by AUP.

use std::fmt::Write as _;

use super::profile::AupResult;

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A "nice" tick step (1, 2, 2.5 or 5 x 10^k) giving about `target` intervals over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|f| f * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn decimals(step: f64) -> usize {
    (0..6).find(|&d| ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() < 1e-9).unwrap_or(6)
}

const PALETTE: [&str; 10] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const DASHES: [&str; 3] = ["", "6 3", "2 2"];

/// A self-contained SVG plot of the performance profiles `rho_m(tau)` of every method: one
/// step line (`<path>`) per method, axes with ticks and labels, and a legend ordered by AUP.
pub fn profile_svg(result: &AupResult, title: &str) -> String {
    // The plot area is fixed; the picture grows to the right for long method names and
    // downwards when the legend has more entries than the plot is tall.
    let (left, top, bottom): (f64, f64, f64) = (70.0, 50.0, 60.0);
    let (pw, ph): (f64, f64) = (540.0, 390.0);
    let longest = result.table.methods.iter().map(|m| m.chars().count()).max().unwrap_or(0);
    let right = 60.0 + (longest + 8) as f64 * 7.0;
    let width = (left + pw + right).round();
    let legend_height = 10.0 + result.table.methods.len() as f64 * 18.0;
    let height = (top + ph.max(legend_height) + bottom).round();
    let span = if result.max_tau > 0.0 { result.max_tau } else { 1.0 };
    let x = |tau: f64| left + tau / span * pw;
    let y = |rho: f64| top + (1.0 - rho) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        xml_escape(title)
    );

    // Grid, ticks and tick labels.
    let step = tick_step(span, 6.0);
    let digits = decimals(step);
    let mut k = 0;
    loop {
        let tau = k as f64 * step;
        if tau > span + 1e-9 {
            break;
        }
        let px = x(tau);
        let _ = writeln!(s, r##"<line x1="{px:.2}" y1="{top:.2}" x2="{px:.2}" y2="{:.2}" stroke="#e0e0e0"/>"##, top + ph);
        let _ = writeln!(s, r##"<line x1="{px:.2}" y1="{:.2}" x2="{px:.2}" y2="{:.2}" stroke="black"/>"##, top + ph, top + ph + 5.0);
        let _ = writeln!(s, r#"<text x="{px:.2}" y="{:.2}" text-anchor="middle">{tau:.digits$}</text>"#, top + ph + 19.0);
        k += 1;
    }
    for k in 0..=5 {
        let rho = k as f64 / 5.0;
        let py = y(rho);
        let _ = writeln!(s, r##"<line x1="{left:.2}" y1="{py:.2}" x2="{:.2}" y2="{py:.2}" stroke="#e0e0e0"/>"##, left + pw);
        let _ = writeln!(s, r##"<line x1="{:.2}" y1="{py:.2}" x2="{left:.2}" y2="{py:.2}" stroke="black"/>"##, left - 5.0);
        let _ = writeln!(s, r#"<text x="{:.2}" y="{:.2}" text-anchor="end">{rho:.1}</text>"#, left - 8.0, py + 4.0);
    }
    // Axes and labels.
    let _ = writeln!(s, r#"<rect x="{left:.2}" y="{top:.2}" width="{pw:.2}" height="{ph:.2}" fill="none" stroke="black"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">τ (log10 of the performance ratio)</text>"#,
        left + pw / 2.0,
        top + ph + 45.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.2}" text-anchor="middle" transform="rotate(-90 18 {:.2})">ρ(τ): fraction of tasks</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );

    // One step line per method, in legend (AUP) order.
    let order = result.ranking();
    for (rank, &m) in order.iter().enumerate() {
        let color = PALETTE[rank % PALETTE.len()];
        let dash = DASHES[(rank / PALETTE.len()) % DASHES.len()];
        let profile = &result.profiles[m];
        let mut d = String::new();
        if let (Some(&t0), Some(&r0)) = (result.taus.first(), profile.first()) {
            let _ = write!(d, "M{:.2} {:.2}", x(t0), y(r0));
            for i in 1..profile.len() {
                if profile[i] != profile[i - 1] {
                    let _ = write!(d, " H{:.2} V{:.2}", x(result.taus[i]), y(profile[i]));
                }
            }
            let _ = write!(d, " H{:.2}", x(*result.taus.last().expect("non-empty grid")));
        }
        let dash_attr = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
        let name = xml_escape(&result.table.methods[m]);
        let _ = writeln!(s, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.8"{dash_attr}><title>{name}</title></path>"#);
        let ly = top + 10.0 + rank as f64 * 18.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.2}" y1="{ly:.2}" x2="{:.2}" y2="{ly:.2}" stroke="{color}" stroke-width="2"{dash_attr}/>"#,
            lx + 24.0
        );
        let _ = writeln!(s, r#"<text x="{:.2}" y="{:.2}">{name} ({:.3})</text>"#, lx + 30.0, ly + 4.0, result.aup[m]);
    }
    s.push_str("</svg>\n");
    s
}
