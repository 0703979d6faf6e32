import CatenaCore
import CatenaTestSupport
import Testing

@Suite("Manual node clock")
struct ManualNodeClockTests {
    /// It stands still until advanced, then reads exactly the sum of the advances.
    @Test func movesOnlyWhenAdvanced() {
        let clock = ManualNodeClock(nanoseconds: 5)
        #expect(clock.nanoseconds == 5)
        #expect(clock.nanoseconds == 5)
        clock.advance(by: .milliseconds(1500))
        #expect(clock.nanoseconds == 5 + 1_500_000_000)
        clock.advance(nanoseconds: 7)
        #expect(clock.nanoseconds == 5 + 1_500_000_007)
        clock.advance(by: .nanoseconds(1))
        #expect(clock.nanoseconds == 5 + 1_500_000_008)
    }

    /// Advances from many tasks at once all count.
    @Test func concurrentAdvancesAllCount() async {
        let clock = ManualNodeClock()
        let shared: any NodeClock = clock
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    for _ in 0..<1000 {
                        clock.advance(nanoseconds: 1)
                        _ = shared.nanoseconds
                    }
                }
            }
        }
        #expect(clock.nanoseconds == 8000)
    }
}
