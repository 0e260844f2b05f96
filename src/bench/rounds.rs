//! Ratios between two runs of one benchmark command, each taken within one round of it.
//!
//! On a shared 2-core machine one run can be a quarter faster or slower than the next for
//! reasons of its own, so a ratio between runs made minutes apart says little. A command
//! with `--rounds N` makes every run N times, a round of all of them after the other, and
//! sets the runs of one round against each other: a ratio is then printed as the median of
//! its rounds', with each round's beside it.

use std::io::Write;

/// Ratios collected by what they compare, in the order first met.
#[derive(Default)]
pub struct Ratios {
    entries: Vec<(String, Vec<Ratio>)>,
}

/// One round's ratio and the two figures it divides.
#[derive(Clone, Copy)]
struct Ratio {
    value: f64,
    over: f64,
    under: f64,
}

impl Ratios {
    /// Adds one round's `over / under` to the ratio described by `what`.
    pub fn add(&mut self, what: String, over: f64, under: f64) {
        let ratio = Ratio {
            value: over / under,
            over,
            under,
        };
        match self.entries.iter_mut().find(|(w, _)| *w == what) {
            Some((_, rounds)) => rounds.push(ratio),
            None => self.entries.push((what, vec![ratio])),
        }
    }

    /// One line per ratio: `what: 0.90 (1800 / 2000)` from a single round, `what: 0.80
    /// median of 3 rounds (0.50, 0.80, 0.90)` from several.
    pub fn print(&self, out: &mut impl Write) {
        for (what, rounds) in &self.entries {
            let _ = match rounds.as_slice() {
                [one] => writeln!(
                    out,
                    "{what}: {:.2} ({:.0} / {:.0})",
                    one.value, one.over, one.under
                ),
                _ => {
                    let mut values: Vec<f64> = rounds.iter().map(|r| r.value).collect();
                    let middle = median(&mut values);
                    let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
                    writeln!(
                        out,
                        "{what}: {middle:.2} median of {} rounds ({})",
                        rounds.len(),
                        each.join(", ")
                    )
                }
            };
        }
    }
}

/// Labelled chart points with one point per round merged into one per label and x: the
/// median of its rounds' y, in the order first met.
pub fn median_points(
    points: impl IntoIterator<Item = (String, (f64, f64))>,
) -> Vec<(String, (f64, f64))> {
    let mut merged: Vec<(String, f64, Vec<f64>)> = Vec::new();
    for (label, (x, y)) in points {
        match merged.iter_mut().find(|(l, px, _)| *l == label && *px == x) {
            Some((_, _, ys)) => ys.push(y),
            None => merged.push((label, x, vec![y])),
        }
    }
    merged
        .into_iter()
        .map(|(label, x, mut ys)| (label, (x, median(&mut ys))))
        .collect()
}

/// The middle of `values` (the mean of the two middle ones for an even count; NaN for
/// none), which it leaves sorted.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(ratios: &Ratios) -> String {
        let mut out = Vec::new();
        ratios.print(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_round_shows_the_two_figures_and_several_show_the_median_and_each_round() {
        let mut ratios = Ratios::default();
        ratios.add("a over b".into(), 1800.0, 2000.0);
        ratios.add("c over d".into(), 1.0, 2.0);
        ratios.add("c over d".into(), 9.0, 10.0);
        ratios.add("c over d".into(), 8.0, 10.0);
        assert_eq!(
            printed(&ratios),
            "a over b: 0.90 (1800 / 2000)\nc over d: 0.80 median of 3 rounds (0.50, 0.80, 0.90)\n"
        );
    }

    #[test]
    fn points_of_several_rounds_become_their_median() {
        let points = [
            ("a".to_string(), (1.0, 10.0)),
            ("a".to_string(), (2.0, 5.0)),
            ("a".to_string(), (1.0, 30.0)),
            ("b".to_string(), (1.0, 7.0)),
            ("a".to_string(), (1.0, 20.0)),
        ];
        assert_eq!(
            median_points(points),
            vec![
                ("a".to_string(), (1.0, 20.0)),
                ("a".to_string(), (2.0, 5.0)),
                ("b".to_string(), (1.0, 7.0)),
            ]
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert!(median(&mut []).is_nan());
    }
}
