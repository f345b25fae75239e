//! Synthetic data generators, reproducible from the recipe's seed (pure; no libtorch).

use crate::recipe::Generator;
use crate::rng::Rng;

/// A regression set whose examples each belong to a known subtask.
pub struct Regions {
    pub dim: usize,
    pub outputs: usize,
    /// Row-major (examples, dim) inputs and (examples, outputs) targets.
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub task: Vec<usize>,
}

/// The subtask of an input: its angular sector in the plane of the first two coordinates.
pub fn sector(x0: f64, x1: f64, tasks: usize) -> usize {
    let a = x1.atan2(x0) + std::f64::consts::PI; // [0, 2π]
    ((a / (2.0 * std::f64::consts::PI) * tasks as f64) as usize).min(tasks - 1)
}

/// Inputs uniform in [−1, 1]^dim; task t's target is W_t·x + b_t (+ noise), W_t and b_t standard
/// normal and drawn once from the seed, so each sector is a different linear problem.
pub fn regions(g: &Generator, seed: u64) -> Regions {
    let Generator::Regions { tasks, dim, outputs, examples, noise } = *g;
    let mut rng = Rng(seed ^ 0x4A43_4F42); // "JACO"
    let maps: Vec<(Vec<f64>, Vec<f64>)> =
        (0..tasks).map(|_| ((0..outputs * dim).map(|_| rng.normal()).collect(), (0..outputs).map(|_| rng.normal()).collect())).collect();
    let (mut x, mut y, mut task) = (Vec::with_capacity(examples * dim), Vec::with_capacity(examples * outputs), Vec::with_capacity(examples));
    for _ in 0..examples {
        let xi: Vec<f64> = (0..dim).map(|_| 2.0 * rng.unit() - 1.0).collect();
        let t = sector(xi[0], xi[1], tasks);
        let (w, b) = &maps[t];
        for o in 0..outputs {
            let v: f64 = (0..dim).map(|i| w[o * dim + i] * xi[i]).sum::<f64>() + b[o] + noise * rng.normal();
            y.push(v as f32);
        }
        x.extend(xi.iter().map(|&v| v as f32));
        task.push(t);
    }
    Regions { dim, outputs, x, y, task }
}

/// How cleanly each subtask is claimed by one expert: for each task, the expert that wins most
/// of its examples and the share it wins. Returns (claimed_by, purity) per task.
pub fn purity(task: &[usize], winner: &[usize], tasks: usize, experts: usize) -> Vec<(usize, f64)> {
    let mut counts = vec![vec![0usize; experts]; tasks];
    for (&t, &w) in task.iter().zip(winner) {
        counts[t][w] += 1;
    }
    counts
        .iter()
        .map(|c| {
            let total: usize = c.iter().sum();
            let (best, n) = c.iter().enumerate().max_by_key(|(_, n)| **n).map_or((0, 0), |(i, n)| (i, *n));
            (best, if total == 0 { 0.0 } else { n as f64 / total as f64 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_split_the_plane_evenly() {
        // 4 sectors starting at angle −π: third quadrant, fourth, first, second.
        assert_eq!(sector(-1.0, -0.1, 4), 0);
        assert_eq!(sector(0.1, -1.0, 4), 1);
        assert_eq!(sector(1.0, 0.1, 4), 2);
        assert_eq!(sector(-0.1, 1.0, 4), 3);
    }

    #[test]
    fn purity_by_hand() {
        // Task 0: experts [1, 1, 0] → claimed by 1, purity 2/3. Task 1: [2, 2] → by 2, purity 1.
        let p = purity(&[0, 0, 0, 1, 1], &[1, 1, 0, 2, 2], 2, 3);
        assert_eq!(p[0].0, 1);
        assert!((p[0].1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(p[1], (2, 1.0));
    }

    #[test]
    fn regions_are_reproducible_and_balanced() {
        let g = Generator::Regions { tasks: 4, dim: 2, outputs: 1, examples: 4000, noise: 0.0 };
        let (a, b) = (regions(&g, 1), regions(&g, 1));
        assert_eq!(a.y, b.y);
        for t in 0..4 {
            let n = a.task.iter().filter(|&&x| x == t).count();
            assert!((900..1100).contains(&n), "task {t}: {n}");
        }
    }
}
