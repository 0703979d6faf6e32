import CatenaBench
import CatenaCore
import CatenaStorage
import Foundation
import Synchronization
import Testing

@Suite("CompactionBenchmark")
struct CompactionBenchmarkTests {
    /// A tiny run: the compaction drops the fill's garbage while the load goes on, every phase
    /// counts puts and gets, and the report's ratios are the phases' rates.
    @Test func tinyRunReportsSaneNumbers() async throws {
        let dir = try ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-test")
        defer { try? ScratchSpace.removeTree(dir) }
        var c = CompactionBenchmark.Configuration(directory: dir)
        c.valueSize = 1024
        c.keySpace = 64
        c.fillBytes = 2 << 20
        c.writers = 4
        c.readers = 1
        c.phase = .milliseconds(300)
        c.segmentSize = 64 << 10
        c.requestWindow = .zero
        let progress = Mutex<[String]>([])
        c.progress = { line in progress.withLock { $0.append(line) } }
        let report = try await CompactionBenchmark(c).run()

        #expect(report.compaction.segmentsRewritten > 0 && report.compaction.recordsDropped > 0)
        #expect(report.compaction.bytesAfter < report.compaction.bytesBefore)
        #expect(report.garbageBefore.collectableBytes > 0)
        for phase in [report.before, report.during, report.after] {
            #expect(phase.elapsed > .zero)
            #expect(phase.putLatency.count <= phase.puts + c.writers, "latencies are of the phase's puts")
        }
        #expect(report.before.puts > 0 && report.after.puts > 0)
        #expect(report.before.gets > 0 && report.after.gets > 0)
        #expect(abs(report.duringRatio - report.during.putsPerSecond / report.before.putsPerSecond) < 1e-9)
        #expect(abs(report.afterRatio - report.after.putsPerSecond / report.before.putsPerSecond) < 1e-9)
        #expect(report.table().contains("during/before"))
        #expect(progress.withLock { $0 }.contains { $0.hasPrefix("fill:") })
        #expect(!FileManager.default.fileExists(atPath: dir + "/compaction-store"), "the benchmark removes its store")
    }

    @Test func badConfigurationsAreRefused() async throws {
        var c = CompactionBenchmark.Configuration(directory: "/nonexistent")
        c.writers = 0
        await #expect(throws: CatenaError.self) { _ = try await CompactionBenchmark(c).run() }
        c.writers = 1
        c.phase = .zero
        #expect(c.problem != nil)
    }
}
