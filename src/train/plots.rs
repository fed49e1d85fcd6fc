//! `mpc compare`'s pictures: the loss curves with each mode's difference to
//! FP32, the dynamic loss scale with its skipped steps and growths, and the
//! FP32 gradients against FP16's range.
//!
//! The five loss curves mostly lie on one another (that is the point of
//! mixed precision), so the lower panel plots each mode's relative
//! difference to FP32, where they separate, and every curve has its own
//! marker shape.

use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (800, 500);

/// Markers drawn on a curve: about this many, so that dense curves stay legible.
const MARKS: usize = 25;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// `(l - r) / |r|` per step, where both are finite and `r` is not 0.
pub fn relative_to(reference: &[f32], losses: &[f32]) -> Vec<Option<f64>> {
    losses
        .iter()
        .zip(reference)
        .map(|(&l, &r)| (l.is_finite() && r.is_finite() && r != 0.0).then(|| (l as f64 - r as f64) / (r as f64).abs()))
        .collect()
}

/// The steps (from 0) that ran with a larger scale than the step before:
/// the scaler grew after `growth_interval` clean steps.
pub fn growths(scales: &[f32]) -> Vec<usize> {
    (1..scales.len()).filter(|&s| scales[s] > scales[s - 1]).collect()
}

/// Draws `points` as a line with a marker every few steps, labelled `name`.
fn curve<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>>,
    i: usize,
    name: &str,
    points: Vec<(f64, f64)>,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let color = Palette99::pick(i).to_rgba();
    let every = (points.len() / MARKS).max(1);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
        .map_err(|x| err(&x))?
        .label(name.to_string())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    let style = ShapeStyle::from(&color).stroke_width(2);
    let marks = points.iter().step_by(every).copied();
    match i % 5 {
        0 => chart.draw_series(marks.map(|p| Circle::new(p, 4, style))).map(|_| ()),
        1 => chart.draw_series(marks.map(|p| TriangleMarker::new(p, 5, style))).map(|_| ()),
        2 => chart.draw_series(marks.map(|p| Cross::new(p, 4, style))).map(|_| ()),
        3 => chart
            .draw_series(marks.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], style)))
            .map(|_| ()),
        _ => chart
            .draw_series(
                marks.map(|p| EmptyElement::at(p) + Polygon::new(vec![(0, -5), (5, 0), (0, 5), (-5, 0)], style)),
            )
            .map(|_| ()),
    }
    .map_err(|x| err(&x))
}

/// The loss curves (log axis) above, each mode's relative difference to the
/// first curve (FP32's) below.
pub fn loss_svg(curves: &[(&str, &[f32])]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, SIZE.1 * 2)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| err(&x))?;
        let (top, bottom) = root.split_vertically(SIZE.1);
        losses_panel(&top, curves)?;
        differences_panel(&bottom, curves)?;
        root.present().map_err(|x| err(&x))?;
    }
    Ok(svg)
}

fn steps_of(curves: &[(&str, &[f32])]) -> f64 {
    curves.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(2) as f64
}

fn losses_panel(area: &Area, curves: &[(&str, &[f32])]) -> Result<(), String> {
    let finite = curves.iter().flat_map(|(_, c)| c.iter()).filter(|v| v.is_finite() && **v > 0.0);
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
    let (lo, hi) = if lo <= hi { (lo / 1.5, hi * 1.5) } else { (1e-3, 1.0) };
    let mut chart = ChartBuilder::on(area)
        .caption("training loss", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1.0..steps_of(curves), (lo..hi).log_scale())
        .map_err(|x| err(&x))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|x| err(&x))?;
    for (i, (name, c)) in curves.iter().enumerate() {
        let points =
            c.iter().enumerate().filter(|(_, v)| v.is_finite() && **v > 0.0).map(|(s, &v)| ((s + 1) as f64, v as f64));
        curve(&mut chart, i, name, points.collect())?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|x| err(&x))?;
    Ok(())
}

fn differences_panel(area: &Area, curves: &[(&str, &[f32])]) -> Result<(), String> {
    let Some(&(reference, r)) = curves.first() else { return Ok(()) };
    let diffs: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|(_, c)| {
            relative_to(r, c).into_iter().enumerate().filter_map(|(s, d)| d.map(|d| ((s + 1) as f64, d))).collect()
        })
        .collect();
    let most = diffs.iter().flatten().map(|&(_, d)| d.abs()).fold(0.0, f64::max);
    let most = if most > 0.0 { most * 1.1 } else { 1e-3 };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("difference to {reference}: (loss - loss {reference}) / loss {reference}"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1.0..steps_of(curves), -most..most)
        .map_err(|x| err(&x))?;
    chart.configure_mesh().x_desc("step").y_desc("relative difference").draw().map_err(|x| err(&x))?;
    for (i, ((name, _), points)) in curves.iter().zip(diffs).enumerate().skip(1) {
        curve(&mut chart, i, name, points)?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|x| err(&x))?;
    Ok(())
}

/// The dynamic mode's loss scale over steps (log2 axis), with its skipped
/// steps (red crosses) and growths (green triangles) marked and counted in
/// the title; a scale that never moved says so.
pub fn scale_svg(scales: &[f32], skipped: &[usize]) -> Result<String, String> {
    let logs: Vec<f64> = scales.iter().map(|&s| (s as f64).log2()).filter(|v| v.is_finite()).collect();
    let lo = logs.iter().copied().fold(f64::MAX, f64::min).min(0.0);
    let hi = logs.iter().copied().fold(f64::MIN, f64::max).max(17.0);
    let grown = growths(scales);
    let title = if skipped.is_empty() && grown.is_empty() {
        format!(
            "fp16-dynamic loss scale: constant at 2^{} (no overflow, no growth in {} steps)",
            logs.first().copied().unwrap_or(16.0),
            scales.len()
        )
    } else {
        format!("fp16-dynamic loss scale: {} skipped step(s) (x), {} growth(s) (^)", skipped.len(), grown.len())
    };
    let at = |s: usize| scales.get(s).map(|&v| ((s + 1) as f64, (v as f64).log2())).filter(|p| p.1.is_finite());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| err(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(1.0..scales.len().max(2) as f64, (lo - 1.0)..(hi + 1.0))
            .map_err(|x| err(&x))?;
        chart.configure_mesh().x_desc("step").y_desc("log2 loss scale").draw().map_err(|x| err(&x))?;
        let points = (0..scales.len()).filter_map(at);
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|x| err(&x))?;
        let red = ShapeStyle::from(&RED).stroke_width(2);
        chart
            .draw_series(skipped.iter().filter_map(|&s| at(s)).map(|p| Cross::new(p, 6, red)))
            .map_err(|x| err(&x))?
            .label("skipped (overflow): the scale backs off after it")
            .legend(move |(x, y)| Cross::new((x + 10, y), 5, red));
        let green = ShapeStyle::from(&GREEN).stroke_width(2);
        chart
            .draw_series(grown.iter().filter_map(|&s| at(s)).map(|p| TriangleMarker::new(p, 6, green)))
            .map_err(|x| err(&x))?
            .label("growth: first step at the larger scale")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, green));
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|x| err(&x))?;
        root.present().map_err(|x| err(&x))?;
    }
    Ok(svg)
}

/// The histogram of log2 |g| of the FP32 parameter gradients, with FP16's
/// smallest subnormal, smallest normal and largest value marked.
pub fn hist_svg(hist: &[u64], hist_lo: i32) -> Result<String, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let used: Vec<usize> = (0..hist.len()).filter(|&i| hist[i] > 0).collect();
    let first = used.first().map_or(-40, |&i| i as i32 + hist_lo).min(-26);
    let last = used.last().map_or(0, |&i| i as i32 + hist_lo + 1).max(17);
    let total: u64 = hist.iter().sum();
    let top = hist.iter().map(|&c| c as f64 / total.max(1) as f64).fold(0.0, f64::max).max(0.01) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("FP32 parameter gradients vs FP16 range", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(first as f64..last as f64, 0.0..top)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("log2 |gradient| (zeros omitted)")
            .y_desc("share of values")
            .draw()
            .map_err(|x| e(&x))?;
        let bars = hist.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x = (i as i32 + hist_lo) as f64;
            Rectangle::new([(x, 0.0), (x + 1.0, c as f64 / total as f64)], BLUE.mix(0.6).filled())
        });
        chart.draw_series(bars).map_err(|x| e(&x))?;
        let marks = [
            (-24.0, "fp16 min subnormal 2^-24"),
            (-14.0, "fp16 min normal 2^-14"),
            (65504f64.log2(), "fp16 max 65504"),
        ];
        for (i, (x, name)) in marks.into_iter().enumerate() {
            let color = [RED, MAGENTA, BLACK][i];
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, top)], color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_relative_to_the_reference_and_skip_what_is_not_finite() {
        let d = relative_to(&[2.0, 4.0, 0.0, 1.0], &[3.0, 4.0, 1.0, f32::NAN]);
        assert_eq!(d, [Some(0.5), Some(0.0), None, None]);
    }

    #[test]
    fn a_growth_is_the_first_step_at_the_larger_scale() {
        assert_eq!(growths(&[4.0, 4.0, 8.0, 4.0, 4.0, 8.0]), [2, 5]);
        assert!(growths(&[65536.0; 10]).is_empty());
    }

    /// The picture says what happened: a constant scale is named as such;
    /// skipped steps and growths are counted and marked.
    #[test]
    fn the_scale_picture_names_its_events() {
        let constant = scale_svg(&[65536.0; 30], &[]).unwrap();
        assert!(constant.contains("constant at 2^16 (no overflow, no growth in 30 steps)"), "{constant}");
        let moved = scale_svg(&[8.0, 8.0, 4.0, 4.0, 8.0], &[1]).unwrap();
        assert!(moved.contains("1 skipped step(s) (x), 1 growth(s) (^)"), "{moved}");
        assert!(moved.contains("skipped (overflow)") && moved.contains("growth: first step"), "{moved}");
    }

    /// Both panels are drawn, the lower one without the reference itself.
    #[test]
    fn the_loss_picture_has_the_differences_below() {
        let (a, b, c) = ([1.0f32, 0.5, 0.25], [1.0f32, 0.51, 0.26], [1.0f32, 0.5, 0.2]);
        let svg = loss_svg(&[("fp32", &a), ("fp16-dynamic", &b), ("bf16", &c)]).unwrap();
        assert!(svg.contains("training loss") && svg.contains("difference to fp32"), "{svg}");
        assert_eq!(svg.matches("\nfp32\n").count(), 1, "the reference is labelled once: {svg}");
        assert_eq!(svg.matches("\nbf16\n").count(), 2, "each mode in both legends: {svg}");
    }
}
