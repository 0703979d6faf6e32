@testable import CatenaBench
import CatenaCore
import Testing

/// The pure parts of the failover and join benchmarks: what an outage is, the settings they
/// refuse, the values they write and the tables they print. (The benchmarks themselves start
/// real processes; they are commands, not tests.)
@Suite("Failover and join benchmarks")
struct FailureBenchmarkTests {
    typealias Ack = SteadyLoad.Ack
    let ms: Int64 = 1_000_000

    @Test func theNextWriteIsTheFirstAcknowledgedPutInvokedAfterTheKill() {
        // Kill at 100 ms. A put invoked at 95 ms is acknowledged at 900 ms (it waited out the
        // failover); the first put invoked after the kill is acknowledged at 1,250 ms.
        let acks = [Ack(invoked: 80 * ms, acknowledged: 90 * ms), Ack(invoked: 95 * ms, acknowledged: 900 * ms),
                    Ack(invoked: 900 * ms, acknowledged: 1_250 * ms), Ack(invoked: 1_250 * ms, acknowledged: 1_260 * ms)]
        let outage = FailoverBenchmark.outage(acks, kill: 100 * ms, end: 3_000 * ms)
        #expect(outage.nextWrite == .milliseconds(1_150))
        // Gaps: 90 -> 900 (810), 900 -> 1250 (350), 1260 -> end 3000 (1740): the end counts.
        #expect(outage.longestGap == .milliseconds(1_740))
        #expect(FailoverBenchmark.outage(acks, kill: 100 * ms, end: 1_300 * ms).longestGap == .milliseconds(810))
    }

    @Test func withoutAWriteAfterTheKillThereIsNoNextWriteAndTheGapRunsToTheEnd() {
        let acks = [Ack(invoked: 0, acknowledged: 50 * ms), Ack(invoked: 60 * ms, acknowledged: 500 * ms)]
        let outage = FailoverBenchmark.outage(acks, kill: 100 * ms, end: 2_000 * ms)
        #expect(outage.nextWrite == nil)
        #expect(outage.longestGap == .milliseconds(1_500))
        // Nothing at all: the gap is the window.
        #expect(FailoverBenchmark.longestGap([], from: 100 * ms, to: 400 * ms) == .milliseconds(300))
    }

    @Test func gapsAreTakenInAcknowledgementOrderWhateverTheRecordingOrder() {
        let acks = [Ack(invoked: 0, acknowledged: 30 * ms), Ack(invoked: 0, acknowledged: 10 * ms), Ack(invoked: 0, acknowledged: 20 * ms),
                    Ack(invoked: 0, acknowledged: 100 * ms)]
        #expect(FailoverBenchmark.longestGap(acks, from: 10 * ms, to: 100 * ms) == .milliseconds(70))
        // The window starts at the last acknowledgement at or before `from` (30 ms), not at `from`.
        #expect(FailoverBenchmark.longestGap(acks, from: 50 * ms, to: 60 * ms) == .milliseconds(30))
    }

    @Test func theGoalNeedsBothFiguresBelowOneAndAHalfTimeouts() {
        let report = FailoverBenchmark.Report(failureTimeout: .seconds(1), runs: [])
        #expect(report.goal == .milliseconds(1_500))
        #expect(report.meetsGoal(.init(nextWrite: .milliseconds(1_400), longestGap: .milliseconds(1_450))))
        #expect(!report.meetsGoal(.init(nextWrite: .milliseconds(1_400), longestGap: .milliseconds(1_600))))
        #expect(!report.meetsGoal(.init(nextWrite: .milliseconds(1_500), longestGap: .milliseconds(1_000))))
        #expect(!report.meetsGoal(.init(nextWrite: nil, longestGap: .milliseconds(10))))
    }

    @Test func theFailoverTableHasARowPerRunAndRoleAndMedians() {
        func role(_ r: FailoverBenchmark.Role, _ next: Int) -> FailoverBenchmark.RoleResult {
            .init(role: r, node: "n1", outage: .init(nextWrite: .milliseconds(next), longestGap: .milliseconds(next + 5)),
                  ready: .milliseconds(300), rejoin: .milliseconds(2_000), rejoinGap: .milliseconds(40))
        }
        let runs = [1, 2, 3].map { i in
            FailoverBenchmark.Run(index: i, roles: [role(.head, 1_000 * i), role(.middle, 1_100), role(.tail, 1_200)], acknowledged: 1_000,
                                  failed: 0, firstFailure: nil)
        }
        let report = FailoverBenchmark.Report(failureTimeout: .seconds(1), runs: runs)
        #expect(report.spread(.head) { $0.outage.nextWrite }?.median == 2_000)
        let lines = report.table().split(separator: "\n").map(String.init)
        let medians = lines.filter { $0.hasPrefix("median") }
        #expect(medians.count == 3)
        #expect(medians[0].contains("2000.0") && medians[0].contains("MISSED"))
        #expect(medians[1].contains("1100.0") && medians[1].contains("met"))
        #expect(lines.filter { $0.hasPrefix("1 ") || $0.hasPrefix("2 ") || $0.hasPrefix("3 ") }.count == 9)
    }

    @Test func settingsOutOfRangeAreRefusedWithInvalidArgument() {
        var f = FailoverBenchmark.Configuration(executable: "/bin/false", directory: "/tmp")
        #expect(throws: Never.self) { try f.validate() }
        f.failureTimeout = .milliseconds(100)  // not above the interval
        #expect(throws: CatenaError.self) { try f.validate() }
        f = FailoverBenchmark.Configuration(executable: "/bin/false", directory: "/tmp")
        f.runs = 0
        #expect { try f.validate() } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        f.runs = 3
        f.valueSize = 10
        #expect { try f.validate() } throws: { ($0 as? CatenaError)?.code == .invalidArgument }

        var j = JoinBenchmark.Configuration(executable: "/bin/false", directory: "/tmp")
        #expect(throws: Never.self) { try j.validate() }
        j.compressions = [.lz4, .lz4]
        #expect { try j.validate() } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        j.compressions = []
        #expect { try j.validate() } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        j.compressions = [.none]
        j.baseline = .milliseconds(10)
        #expect { try j.validate() } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
    }

    @Test func valuesAreHalfRandomHalfTextAndDifferentPerIndex() {
        let values = MixedValues(size: 64 << 10)
        let a = values.value(1)
        let b = values.value(2)
        #expect(a.count == 64 << 10 && b.count == 64 << 10)
        #expect(a == values.value(1))
        #expect(a[..<(32 << 10)] != b[..<(32 << 10)])
        #expect(a[(32 << 10)...] != b[(32 << 10)...])
        // The second half is text after its 8-byte index stamp.
        let text = a[((32 << 10) + 8)...]
        #expect(text.allSatisfy { $0 == 0x0A || (0x20..<0x7F).contains($0) })
        let odd = MixedValues(size: 65)
        #expect(odd.value(7).count == 65)
    }

    @Test func theJoinTableReportsRatesAndGoals() {
        let t = { (puts: Int, s: Int) in JoinBenchmark.Throughput(puts: puts, valueSize: 64 << 10, elapsed: .seconds(s)) }
        let ok = JoinBenchmark.CompressionResult(
            compression: .lz4, fill: t(16_384, 4), baseline: t(10_000, 5), duringCopy: t(6_000, 3), joined: true,
            firstByte: .milliseconds(150), timeToJoin: .seconds(2), copiedBytes: 800_000_000, tailBytes: 810_000_000,
            copiedSeq: 20_000, tailSeq: 20_100)
        #expect(ok.copyMegabytesPerSecond == 400)
        #expect(abs(ok.foregroundRatio - 1.0) < 1e-9)
        #expect(ok.copyGoalMet && ok.foregroundGoalMet)
        var late = ok
        late.compression = .none
        late.joined = false
        late.timeToJoin = .seconds(300)
        #expect(!late.copyGoalMet)
        let table = JoinBenchmark.Report(results: [ok, late]).table()
        #expect(table.contains("met / met"))
        #expect(table.contains("MISSED / "))
        #expect(table.contains("> 300"))
    }
}
