//! A self-contained report.html (no scripts, no external assets) with inline
//! SVG plots: reliability diagram, coverage–accuracy curve, top confusions,
//! per-class table, worst slices and the pairwise comparisons.

use std::fmt::Write;

use crate::eval::{Comparison, ModelEval};

/// HTML-escapes `&`, `<`, `>`, `"` and `'` (the reports quote labels,
/// slice values and file names taken from the data).
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(ch),
        }
    }
    o
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

const W: f64 = 320.0;
const H: f64 = 240.0;
const PAD: f64 = 36.0;

fn axes(title: &str, xlabel: &str, ylabel: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}">
<rect width="100%" height="100%" fill="#fff"/>
<text x="{cx}" y="14" font-size="12" text-anchor="middle" font-weight="bold">{t}</text>
<line x1="{p}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{p}" y1="{top}" x2="{p}" y2="{b}" stroke="#333"/>
<text x="{cx}" y="{h2}" font-size="11" text-anchor="middle">{xl}</text>
<text x="10" y="{cy}" font-size="11" text-anchor="middle" transform="rotate(-90 10 {cy})">{yl}</text>
"##,
        w = W,
        h = H,
        t = esc(title),
        cx = W / 2.0,
        p = PAD,
        b = H - PAD,
        r = W - 10.0,
        top = 20.0,
        h2 = H - 6.0,
        xl = esc(xlabel),
        yl = esc(ylabel),
        cy = H / 2.0
    );
    for i in 0..=4 {
        let v = i as f64 / 4.0;
        let (x, y) = (sx(v), sy(v));
        let _ = write!(
            s,
            r##"<text x="{x}" y="{yb}" font-size="9" text-anchor="middle">{v:.2}</text><text x="{xl}" y="{y}" font-size="9" text-anchor="end">{v:.2}</text><line x1="{p}" y1="{y}" x2="{r}" y2="{y}" stroke="#eee"/>"##,
            yb = H - PAD + 12.0,
            xl = PAD - 3.0,
            p = PAD,
            r = W - 10.0
        );
    }
    s
}

fn sx(v: f64) -> f64 {
    PAD + v.clamp(0.0, 1.0) * (W - 10.0 - PAD)
}
fn sy(v: f64) -> f64 {
    (H - PAD) - v.clamp(0.0, 1.0) * (H - PAD - 20.0)
}

fn reliability_svg(m: &ModelEval) -> String {
    let mut s = axes(
        &format!("Reliability: {}", m.summary.id),
        "confidence (full path)",
        "accuracy",
    );
    let _ = write!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 3"/>"##,
        sx(0.0),
        sy(0.0),
        sx(1.0),
        sy(1.0)
    );
    let total: usize = m.reliability.iter().map(|b| b.count).sum::<usize>().max(1);
    for b in &m.reliability {
        if b.count == 0 {
            continue;
        }
        let x0 = sx(b.lo) + 1.0;
        let w = sx(b.hi) - sx(b.lo) - 2.0;
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#4c78a8" opacity="0.8"><title>{lo:.1}-{hi:.1}: acc {acc:.3}, conf {c:.3}, n {n}</title></rect><rect x="{x0:.1}" y="{yb:.1}" width="{w:.1}" height="{hb:.1}" fill="#f58518" opacity="0.5"/>"##,
            y = sy(b.accuracy),
            h = sy(0.0) - sy(b.accuracy),
            lo = b.lo,
            hi = b.hi,
            acc = b.accuracy,
            c = b.mean_confidence,
            n = b.count,
            yb = sy(b.count as f64 / total as f64 * 0.3),
            hb = sy(0.0) - sy(b.count as f64 / total as f64 * 0.3),
        );
    }
    s.push_str("</svg>");
    s
}

fn coverage_svg(models: &[ModelEval]) -> String {
    let mut s = axes("Coverage vs accuracy", "coverage", "accuracy");
    let colors = ["#4c78a8", "#e45756", "#54a24b", "#b279a2", "#f58518"];
    for (i, m) in models.iter().enumerate() {
        let pts: Vec<String> = m
            .coverage_curve
            .iter()
            .map(|(c, a)| format!("{:.1},{:.1}", sx(*c), sy(*a)))
            .collect();
        let col = colors[i % colors.len()];
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{col}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="10" fill="{col}">{}</text>"##,
            pts.join(" "),
            PAD + 6.0,
            H - PAD - 8.0 - 12.0 * i as f64,
            esc(&m.summary.id)
        );
        // Mark the operating point of the decision layer.
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{col}"><title>operating point: coverage {:.3}, selective accuracy {:.3}</title></circle>"##,
            sx(m.summary.coverage),
            sy(m.summary.selective_accuracy),
            m.summary.coverage,
            m.summary.selective_accuracy
        );
    }
    let _ = write!(
        s,
        r##"<g font-size="9"><circle cx="{cx}" cy="{cy}" r="4" fill="#555"/><text x="{tx}" y="{ty}">operating point (decision thresholds)</text></g>"##,
        cx = PAD + 10.0,
        tx = PAD + 19.0,
        // Above the model names, in the empty lower left.
        cy = H - PAD - 11.0 - 12.0 * models.len() as f64,
        ty = H - PAD - 8.0 - 12.0 * models.len() as f64,
    );
    s.push_str("</svg>");
    s
}

fn confusion_svg(level: &str, conf: &[crate::eval::Confusion]) -> String {
    let rows = conf.len().max(1);
    let h = 24.0 + 18.0 * rows as f64;
    let max = conf.iter().map(|c| c.count).max().unwrap_or(1) as f64;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{h}" viewBox="0 0 560 {h}"><rect width="100%" height="100%" fill="#fff"/><text x="4" y="14" font-size="12" font-weight="bold">Top confusions at {}</text>"##,
        esc(level)
    );
    for (i, c) in conf.iter().enumerate() {
        let y = 22.0 + 18.0 * i as f64;
        // Bars end by x = 510, leaving room for the count on a 560-wide
        // canvas.
        let w = 120.0 * c.count as f64 / max;
        let _ = write!(
            s,
            r##"<text x="4" y="{ty}" font-size="10">{} → {}</text><rect x="390" y="{y}" width="{w:.1}" height="13" fill="#e45756"/><text x="{tx:.1}" y="{ty}" font-size="10">{}</text>"##,
            esc(&c.truth),
            esc(&c.predicted),
            c.count,
            ty = y + 10.0,
            tx = 394.0 + w,
        );
    }
    if conf.is_empty() {
        s.push_str(r##"<text x="4" y="34" font-size="10">no confusions</text>"##);
    }
    s.push_str("</svg>");
    s
}

/// Render the whole report.
pub fn render(
    models: &[ModelEval],
    comparisons: &[Comparison],
    gate: Option<&crate::gate::GateVerdict>,
    title: &str,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:right}}
th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}
.bad{{color:#b00}}.good{{color:#070}}h2{{border-bottom:1px solid #ccc;padding-bottom:4px}}</style></head><body>
<h1>{t}</h1>"##,
        t = esc(title)
    );
    if let Some(g) = gate {
        let _ = write!(
            h,
            "<h2>Release gate</h2><p class=\"{}\"><b>{}</b>{}</p>",
            if g.passed { "good" } else { "bad" },
            if g.passed { "PASSED" } else { "FAILED" },
            g.reference
                .as_ref()
                .map(|r| format!(" (candidates against {})", esc(r)))
                .unwrap_or_default()
        );
        if !g.failed.is_empty() {
            h.push_str("<ul>");
            for f in &g.failed {
                let _ = write!(h, "<li class=\"bad\">{}</li>", esc(f));
            }
            h.push_str("</ul>");
        }
    }
    // Summary table.
    h.push_str("<h2>Summary</h2><table><tr><th>model</th><th>kind</th><th>n</th>");
    let levels: Vec<String> = models
        .first()
        .map(|m| m.summary.levels.keys().cloned().collect())
        .unwrap_or_default();
    for l in &levels {
        let _ = write!(h, "<th>{l} acc</th><th>{l} macro-F1</th>");
    }
    h.push_str("<th>path acc</th><th>hier. F1</th><th>ECE (raw → cal.)</th><th>in-scope acc</th><th>coverage</th><th>selective acc</th><th>OOS recall</th><th>OOS precision</th><th>cases/s</th></tr>");
    for m in models {
        let s = &m.summary;
        let lineage = s
            .parent
            .as_ref()
            .map(|p| {
                format!(
                    "<br><small>from {} + {}</small>",
                    esc(&p.id),
                    esc(&p.added.join(", "))
                )
            })
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}{lineage}</td><td>{}</td><td>{}</td>",
            esc(&s.id),
            esc(&s.kind),
            s.n
        );
        for l in &levels {
            match s.levels.get(l) {
                Some(v) => {
                    let _ = write!(
                        h,
                        "<td>{}</td><td>{}</td>",
                        pct(v.accuracy),
                        pct(v.macro_f1)
                    );
                }
                None => h.push_str("<td>-</td><td>-</td>"),
            }
        }
        let opt = |x: Option<f64>| x.map(pct).unwrap_or_else(|| "-".into());
        let _ = write!(
            h,
            "<td>{}</td><td>{}</td><td>{:.3} → {:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            pct(s.path_accuracy),
            pct(s.hierarchical_f1),
            s.ece_uncalibrated,
            s.ece,
            pct(s.in_scope_accuracy),
            pct(s.coverage),
            pct(s.selective_accuracy),
            opt(s.oos_recall),
            opt(s.oos_precision),
            s.throughput_cases_per_s.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into())
        );
    }
    h.push_str("</table>");

    if !comparisons.is_empty() {
        h.push_str("<h2>Comparisons</h2><p>Δ = accuracy(b) − accuracy(a) on the same rows; 95% paired bootstrap interval; exact McNemar p-value.</p><table><tr><th>a</th><th>b</th><th>level</th><th>Δ accuracy</th><th>95% CI</th><th>McNemar p</th><th>n</th></tr>");
        for c in comparisons {
            let cls = if c.ci95[0] > 0.0 {
                "good"
            } else if c.ci95[1] < 0.0 {
                "bad"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{:+.2} pts</td><td>[{:+.2}, {:+.2}]</td><td>{:.4}</td><td>{}</td></tr>",
                esc(&c.a),
                esc(&c.b),
                c.level,
                100.0 * c.delta_accuracy,
                100.0 * c.ci95[0],
                100.0 * c.ci95[1],
                c.mcnemar_p,
                c.n
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Coverage and accuracy</h2><div class=\"plots\">");
    h.push_str(&coverage_svg(models));
    for m in models {
        h.push_str(&reliability_svg(m));
    }
    h.push_str("</div>");
    h.push_str(
        "<p class=\"legend\">Coverage: each model's accuracy on the cases it answers at full depth as \
         its confidence cut moves; the dot is where its decision thresholds put it. Reliability: \
         <span style=\"color:#4c78a8\">&#9632;</span> accuracy of the cases in each confidence bin, \
         <span style=\"color:#f58518\">&#9632;</span> share of cases in the bin (&times;0.3), \
         dashed: perfect calibration.</p>",
    );
    h.push_str(
        "<h3>Calibration per level</h3><p class=\"legend\">ECE of each level's reported confidence \
         (in-scope rows); the floor is what a perfectly calibrated model with the same confidences \
         shows on as many rows (mean and 90th percentile of 200 simulated draws): an ECE near it \
         is the split's size, not the model.</p><table><tr><th>model</th><th>level</th><th>n</th>\
         <th>ECE</th><th>floor (mean / p90)</th></tr>",
    );
    for m in models {
        for (l, v) in &m.summary.levels {
            let cls = if v.ece > v.ece_floor_p90 { "bad" } else { "" };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{:.4}</td><td>{:.4} / {:.4}</td></tr>",
                esc(&m.summary.id),
                esc(l),
                v.n,
                v.ece,
                v.ece_floor,
                v.ece_floor_p90
            );
        }
    }
    h.push_str("</table>");

    for m in models {
        let _ = write!(
            h,
            "<h2>Model {}</h2><div class=\"plots\">",
            esc(&m.summary.id)
        );
        for (level, conf) in &m.confusions {
            h.push_str(&confusion_svg(level, conf));
        }
        h.push_str("</div>");
        if !m.slices.is_empty() {
            let mut sl = m.slices.clone();
            sl.sort_by(|a, b| a.in_scope_accuracy.total_cmp(&b.in_scope_accuracy));
            h.push_str("<h3>Worst slices</h3><table><tr><th>slice</th><th>n</th><th>path acc</th><th>in-scope acc</th></tr>");
            for s in sl.iter().take(10) {
                let _ = write!(
                    h,
                    "<tr><td>{}={}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s.column),
                    esc(&s.value),
                    s.n,
                    pct(s.path_accuracy),
                    pct(s.in_scope_accuracy)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h3>Per class (full path)</h3><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>");
        let mut pc = m.per_class.clone();
        pc.sort_by(|a, b| a.f1.total_cmp(&b.f1));
        for c in &pc {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                esc(&c.label),
                c.precision,
                c.recall,
                c.f1,
                c.support
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Confusion;

    /// The x positions of every `<text x="...">` in an SVG.
    fn text_xs(svg: &str) -> Vec<f64> {
        svg.split("<text x=\"")
            .skip(1)
            .map(|t| t[..t.find('"').unwrap()].parse().unwrap())
            .collect()
    }

    #[test]
    fn the_longest_confusion_bar_leaves_room_for_its_count() {
        let conf: Vec<Confusion> = [123_456, 9_000, 5]
            .iter()
            .map(|&count| Confusion {
                truth: "a/b/c".into(),
                predicted: "a/b/d".into(),
                count,
            })
            .collect();
        let svg = confusion_svg("l3", &conf);
        // A six-digit count at font size 10 needs about 40 px.
        let last = text_xs(&svg).into_iter().fold(0.0, f64::max);
        assert!(last + 40.0 <= 560.0, "count drawn at x = {last}");
        assert!(svg.contains(">123456<"));
    }
}
