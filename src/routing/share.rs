//! Sharing a route-wide hourly cap over the route's IPs by weight.
//!
//! Shares are whole messages that add up to the cap exactly (largest remainder),
//! so the route never exceeds its throttle through rounding. An IP whose own cap
//! is below its share (a warming IP, say) keeps its own cap and the rest of the
//! budget goes to the others, so a small IP does not waste the route's volume.

/// (position, messages per hour)
type Share = (usize, i64);

/// The hourly cap of each IP once `budget` is shared by `weights`. `caps[i]` is
/// the IP's own cap; the result never exceeds it. All weights must be positive.
pub(crate) fn share_budget(caps: &[i64], weights: &[i32], budget: i64) -> Vec<i64> {
    debug_assert_eq!(caps.len(), weights.len());
    let mut result = caps.to_vec();
    let mut open: Vec<usize> = (0..caps.len()).collect();
    let mut remaining = budget.max(0);
    while !open.is_empty() {
        let open_weights: Vec<i32> = open.iter().map(|&i| weights[i]).collect();
        let shares = largest_remainder(remaining, &open_weights);
        let (fits, over): (Vec<Share>, Vec<Share>) = open
            .iter()
            .copied()
            .zip(shares)
            .partition(|&(i, share)| caps[i] <= share);
        if fits.is_empty() {
            for (i, share) in over {
                result[i] = share;
            }
            break;
        }
        for (i, _) in &fits {
            remaining -= caps[*i];
        }
        open = over.into_iter().map(|(i, _)| i).collect();
    }
    result
}

/// Splits `total` in proportion to `weights` into whole numbers summing to
/// `total`. Leftover units go to the largest remainders, ties to the larger
/// weight, then to the earlier position: a larger weight never gets less.
pub(crate) fn largest_remainder(total: i64, weights: &[i32]) -> Vec<i64> {
    let weight_sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    if weight_sum <= 0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let total = i128::from(total);
    let mut shares: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, i32, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total * i128::from(*w);
        shares.push(exact / weight_sum);
        remainders.push((exact % weight_sum, *w, i));
    }
    let handed_out: i128 = shares.iter().sum();
    let leftover = usize::try_from(total - handed_out).unwrap_or(0);
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for &(_, _, i) in remainders.iter().take(leftover) {
        shares[i] += 1;
    }
    shares
        .into_iter()
        .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_add_up_and_follow_weight() {
        assert_eq!(largest_remainder(10, &[100, 100, 100]), vec![4, 3, 3]);
        assert_eq!(largest_remainder(1, &[40, 60]), vec![0, 1]);
        assert_eq!(largest_remainder(1000, &[100, 50]), vec![667, 333]);
    }

    #[test]
    fn a_small_cap_leaves_its_unused_share_to_the_others() {
        // A warming IP capped at 20/h next to a warm one: the route still gets 1000/h.
        assert_eq!(
            share_budget(&[20, 10_000], &[100, 100], 1000),
            vec![20, 980]
        );
        // Caps larger than the shares: plain proportional split.
        assert_eq!(
            share_budget(&[10_000, 10_000], &[100, 25], 1000),
            vec![800, 200]
        );
    }

    proptest! {
        #[test]
        fn sharing_never_exceeds_caps_or_budget(
            rows in proptest::collection::vec((1i64..5000, 1i32..=100), 1..20),
            budget in 1i64..20_000,
        ) {
            let caps: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let weights: Vec<i32> = rows.iter().map(|r| r.1).collect();
            let shared = share_budget(&caps, &weights, budget);
            let total: i64 = shared.iter().sum();
            prop_assert!(total <= budget);
            prop_assert!(total == budget || shared == caps, "budget left unused while some IP could take more");
            for (s, c) in shared.iter().zip(&caps) {
                prop_assert!(*s >= 0 && s <= c);
            }
        }
    }
}
