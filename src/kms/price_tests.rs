use super::*;

#[test]
fn a_key_costs_a_dollar_per_version_unless_pending_deletion() {
    assert_eq!(monthly_cost_usd(KeyState::Enabled, 1), 1);
    assert_eq!(monthly_cost_usd(KeyState::Enabled, 3), 3);
    // Disabled keys are still charged, as in AWS.
    assert_eq!(monthly_cost_usd(KeyState::Disabled, 2), 2);
    assert_eq!(monthly_cost_usd(KeyState::PendingDeletion, 5), 0);
}
