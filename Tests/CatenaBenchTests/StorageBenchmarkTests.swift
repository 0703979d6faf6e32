import CatenaBench
import CatenaCore
import CatenaStorage
import Testing

@Suite("StorageBenchmark")
struct StorageBenchmarkTests {
    /// Runs `body` with a fresh temporary directory that is removed afterwards.
    func withScratch<T>(_ body: (String) async throws -> T) async throws -> T {
        let dir = try ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-test")
        defer { try? ScratchSpace.removeTree(dir) }
        return try await body(dir)
    }

    @Test(arguments: StorageBenchmark.Encoding.allCases)
    func tinyRunReportsSaneNumbers(encoding: StorageBenchmark.Encoding) async throws {
        try await withScratch { dir in
            var c = StorageBenchmark.Configuration(directory: dir)
            c.valueSizes = [4 << 10, 64 << 10]
            c.maxRecordsPerSize = 200
            c.concurrency = 8
            c.durability = .none
            c.encoding = encoding
            c.keySpace = 50
            let report = try await StorageBenchmark(c).run()

            #expect(report.results.map(\.valueSize) == [4 << 10, 64 << 10])
            for r in report.results {
                #expect(r.records == 200)
                #expect(r.latency.count == 200)
                #expect(r.metrics.appendedRecords == 200)
                #expect(r.metrics.appendCalls == 200)
                #expect(r.metrics.appendedBytes > 200 * r.valueSize)
                #expect(r.metrics.syncs == 0)  // durability .none
                #expect(r.recordsPerSync == nil)
                #expect(r.putsPerSecond > 0)
                #expect(r.megabytesPerSecond > 0)
                #expect(r.latency.p50 > 0)
                #expect(r.latency.p50 <= r.latency.p90)
                #expect(r.latency.p90 <= r.latency.p99)
                #expect(r.latency.p99 <= r.latency.p999)
                #expect(r.latency.p999 <= r.latency.max)
                let raw = try #require(r.rawEndSync)
                #expect(raw.bytes == r.metrics.appendedBytes)
                #expect(raw.megabytesPerSecond > 0)
                #expect(try #require(r.rawPeriodicSync).bytes == r.metrics.appendedBytes)
                #expect(try #require(r.ratio) > 0)
            }

            let table = report.table()
            let lines = table.split(separator: "\n").map(String.init)
            #expect(lines.contains { $0.hasPrefix("4 KiB ") && $0.contains("200") })
            #expect(lines.contains { $0.hasPrefix("64 KiB ") })
            #expect(table.contains("goal: 4 KiB: >= 30,000 puts/s"))
            #expect(table.contains("goal: 1 MiB") && table.contains("NOT MEASURED"))
            // Rows are aligned: the header and both data rows have the same width.
            let widths = Set(lines.prefix(5).filter { !$0.hasPrefix("-") }.map(\.count))
            #expect(widths.count == 1)

            let json = report.json()
            #expect(json.hasPrefix("{") && json.hasSuffix("}"))
            #expect(json.contains("\"valueSize\":4096"))
            #expect(json.contains("\"durability\":\"none\""))
        }
        // Nothing is left behind in the store's subdirectories (checked by removeTree not throwing).
    }

    @Test func batchDurabilityGroupsCommits() async throws {
        try await withScratch { dir in
            var c = StorageBenchmark.Configuration(directory: dir)
            c.valueSizes = [4 << 10]
            c.maxRecordsPerSize = 200
            c.concurrency = 8
            c.durability = .batch
            c.measureRawDisk = false
            let report = try await StorageBenchmark(c).run()
            let r = try #require(report.results.first)
            #expect(r.metrics.appendedRecords == 200)
            #expect(r.metrics.syncs >= 1)
            #expect(r.metrics.syncs <= 201)  // one per batch, plus the directory sync of the new segment
            #expect(r.rawEndSync == nil && r.ratio == nil)
            #expect(report.table().contains("4 KiB"))
            // The benchmark removed its store directory.
            #expect(!PosixFileSystem().fileExists(dir + "/store-4096"))
        }
    }

    @Test func configurationProblems() {
        var c = StorageBenchmark.Configuration(directory: "/nonexistent")
        #expect(c.problem == nil)
        #expect(c.recordCount(forValueSize: 4 << 10) == 200_000)
        #expect(c.recordCount(forValueSize: 1 << 20) == 2048)
        c.valueSizes = [32 << 20]
        #expect(c.problem != nil)
        c.valueSizes = [4096]
        c.concurrency = 0
        #expect(c.problem != nil)
    }

    @Test func sizes() {
        #expect(parseSize("4KiB") == 4096)
        #expect(parseSize("1m") == 1 << 20)
        #expect(parseSize("512") == 512)
        #expect(parseSize(" 2 MiB ") == 2 << 20)
        #expect(parseSize("x") == nil)
        #expect(parseSize("4 TB") == nil)
        #expect(sizeName(4096) == "4 KiB")
        #expect(sizeName(1 << 20) == "1 MiB")
        #expect(sizeName(1000) == "1000 B")
    }

    @Test func latencyPercentiles() {
        let s = LatencySummary(nanoseconds: (1...1000).reversed().map { Int64($0) })
        #expect(s.count == 1000)
        #expect(s.p50 == 500)
        #expect(s.p90 == 900)
        #expect(s.p99 == 990)
        #expect(s.p999 == 999)
        #expect(s.max == 1000)
        #expect(LatencySummary(nanoseconds: []).max == 0)
    }

    @Test func mountOfRootIsKnown() {
        #expect(ScratchSpace.mount(of: "/")?.mountPoint == "/")
    }
}
