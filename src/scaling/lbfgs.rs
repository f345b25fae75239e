//! Limited-memory BFGS (Nocedal & Wright, Alg. 7.4/7.5) with a backtracking Armijo line search.
//! Small and dependency-free: the scaling-law fits have five parameters.

/// Minimise `f`, which returns (value, gradient), from `x0`. Returns (x, f(x)).
pub fn minimize(f: &dyn Fn(&[f64]) -> (f64, Vec<f64>), x0: &[f64], max_iter: usize) -> (Vec<f64>, f64) {
    const M: usize = 10;
    let mut x = x0.to_vec();
    let (mut fx, mut g) = f(&x);
    let mut s_hist: Vec<Vec<f64>> = vec![];
    let mut y_hist: Vec<Vec<f64>> = vec![];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    for _ in 0..max_iter {
        if !fx.is_finite() || dot(&g, &g).sqrt() < 1e-12 {
            break;
        }
        // Two-loop recursion: d = −H·g.
        let mut q = g.clone();
        let mut alphas = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alphas[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alphas[i] * yj;
            }
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alphas[i] - beta) * sj;
            }
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        if dot(&d, &g) >= 0.0 {
            // Not a descent direction (curvature went wrong): restart with steepest descent.
            d = g.iter().map(|v| -v).collect();
            s_hist.clear();
            y_hist.clear();
        }
        if s_hist.is_empty() {
            // No curvature known yet: a steepest-descent step of unit length at most.
            let norm = dot(&d, &d).sqrt();
            if norm > 1.0 {
                d.iter_mut().for_each(|v| *v /= norm);
            }
        }
        // Backtracking line search on the Armijo condition.
        let slope = dot(&d, &g);
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let xn: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            let (fn_, gn) = f(&xn);
            if fn_.is_finite() && fn_ <= fx + 1e-4 * t * slope {
                accepted = Some((xn, fn_, gn));
                break;
            }
            t *= 0.5;
        }
        let Some((xn, fn_, gn)) = accepted else { break };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let converged = (fx - fn_).abs() <= 1e-15 * fx.abs().max(1.0);
        if dot(&s, &y) > 1e-16 {
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > M {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        x = xn;
        fx = fn_;
        g = gn;
        if converged {
            break;
        }
    }
    (x, fx)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_rosenbrock_minimum() {
        // f(x, y) = (1 − x)² + 100·(y − x²)², minimum 0 at (1, 1).
        let f = |v: &[f64]| {
            let (x, y) = (v[0], v[1]);
            ((1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2), vec![-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])
        };
        let (x, fx) = super::minimize(&f, &[-1.2, 1.0], 500);
        assert!((x[0] - 1.0).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5 && fx < 1e-10, "{x:?} {fx}");
    }
}
