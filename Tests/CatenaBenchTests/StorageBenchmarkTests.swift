import CatenaBench
import CatenaCore
import CatenaStorage
import Synchronization
import Testing

@Suite("StorageBenchmark")
struct StorageBenchmarkTests {
    /// Runs `body` with a fresh temporary directory that is removed afterwards.
    func withScratch<T>(_ body: (String) async throws -> T) async throws -> T {
        let dir = try ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-test")
        defer { try? ScratchSpace.removeTree(dir) }
        return try await body(dir)
    }

    /// Checks the summary of `r` against its rounds: counts, medians within min-max, ratios per round.
    func checkSummary(_ r: StorageBenchmark.SizeResult, rounds: Int) throws {
        #expect(r.rounds.count == rounds)
        #expect(r.rounds.map(\.round) == Array(1...rounds))
        // Odd rounds run the store first, even rounds the raw disk.
        #expect(r.rounds.map(\.storeFirst) == (1...rounds).map { $0 % 2 == 1 })
        #expect(r.latency.count == r.records * rounds)  // pooled over the rounds
        let spreads = [r.putsPerSecond, r.megabytesPerSecond, r.rawEndSync, r.rawPeriodicSync, r.ratio, r.ratioToPeriodic, r.recordsPerBatch]
        for s in spreads {
            let s = try #require(s)
            #expect(s.min <= s.median && s.median <= s.max)
        }
        #expect(r.putsPerSecond.min == r.rounds.map(\.putsPerSecond).min())
        #expect(r.putsPerSecond.max == r.rounds.map(\.putsPerSecond).max())
        var perRoundRatios: [Double] = []
        for x in r.rounds {
            let raw = try #require(x.rawEndSync)
            let ratio = try #require(x.ratio)
            // The ratio is taken within the round: store MB/s over the same round's raw MB/s.
            #expect(abs(ratio - x.megabytesPerSecond / raw.megabytesPerSecond) < 1e-12)
            perRoundRatios.append(ratio)
        }
        let ratio = try #require(r.ratio)
        #expect(ratio == StorageBenchmark.Spread(perRoundRatios))
        #expect(ratio.min == perRoundRatios.min() && ratio.max == perRoundRatios.max())
    }

    @Test(arguments: StorageBenchmark.Encoding.allCases)
    func tinyRunReportsSaneNumbers(encoding: StorageBenchmark.Encoding) async throws {
        try await withScratch { dir in
            var c = StorageBenchmark.Configuration(directory: dir)
            c.valueSizes = [4 << 10, 64 << 10]
            c.maxRecordsPerSize = 200
            c.repetitions = 2
            c.concurrency = 8
            c.durability = .none
            c.encoding = encoding
            c.keySpace = 50
            let progress = Mutex<[String]>([])
            c.progress = { line in progress.withLock { $0.append(line) } }
            let report = try await StorageBenchmark(c).run()

            #expect(report.repetitions == 2)
            #expect(report.elapsed > .zero)
            #expect(report.results.map(\.valueSize) == [4 << 10, 64 << 10])
            for r in report.results {
                #expect(r.records == 200)
                try checkSummary(r, rounds: 2)
                #expect(r.recordsPerSync == nil)  // durability .none: no fsyncs
                for x in r.rounds {
                    #expect(x.valueSize == r.valueSize)
                    #expect(x.records == 200)
                    #expect(x.latency.count == 200)
                    #expect(x.metrics.appendedRecords == 200)
                    #expect(x.metrics.appendCalls == 200)
                    #expect(x.metrics.appendedBytes > 200 * r.valueSize)
                    // The raw phases, which may run first, write exactly what the store appends.
                    #expect(x.metrics.appendedBytes == c.recordBytes(forValueSize: r.valueSize))
                    #expect(x.metrics.syncs == 0)
                    #expect(x.recordsPerSync == nil)
                    #expect(x.putsPerSecond > 0)
                    #expect(x.megabytesPerSecond > 0)
                    #expect(x.latency.p50 > 0)
                    #expect(x.latency.p50 <= x.latency.p90)
                    #expect(x.latency.p90 <= x.latency.p99)
                    #expect(x.latency.p99 <= x.latency.p999)
                    #expect(x.latency.p999 <= x.latency.max)
                    #expect(x.wallTime >= x.elapsed)
                    let raw = try #require(x.rawEndSync)
                    #expect(raw.bytes == x.metrics.appendedBytes)
                    #expect(raw.syncs == 1)
                    #expect(try #require(x.rawPeriodicSync).bytes == x.metrics.appendedBytes)
                }
                #expect(r.latency.max == r.rounds.map(\.latency.max).max())
            }
            #expect(progress.withLock { $0.count } == 4)
            #expect(progress.withLock { $0[1] }.hasPrefix("4 KiB round 2/2 (raw disk first)"))

            let table = report.table()
            let lines = table.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            #expect(table.contains("median (min-max) of 2 rounds"))
            // One summary row and one latency row per size, one row per round.
            #expect(lines.filter { $0.hasPrefix("4 KiB ") }.count == 1 + 1 + 2)
            #expect(lines.filter { $0.hasPrefix("64 KiB ") }.count == 1 + 1 + 2)
            #expect(lines.contains { $0.hasPrefix("4 KiB ") && $0.contains("200 x 2") })
            #expect(table.contains("goal: 4 KiB: >= 30,000 puts/s"))
            #expect(table.contains("goal: 1 MiB") && table.contains("NOT MEASURED"))
            // Each of the three tables (title, header, rule, rows; then a blank line) is aligned:
            // its first header line and its data rows, whose last cells are right-aligned, are
            // equally long.
            let blocks = table.split(separator: "\n\n").map { $0.split(separator: "\n").map(String.init) }
            #expect(blocks.count == 4)
            for block in blocks.prefix(3) {
                let rows = block.filter { $0.hasPrefix("4 KiB ") || $0.hasPrefix("64 KiB ") }
                #expect(rows.count >= 2)
                #expect(Set((rows + [block[1]]).map(\.count)).count == 1)
            }
            #expect(!lines.contains { $0.hasSuffix(" ") })

            let json = report.json()
            #expect(json.hasPrefix("{") && json.hasSuffix("}"))
            #expect(json.contains("\"valueSize\":4096"))
            #expect(json.contains("\"durability\":\"none\""))
            #expect(json.contains("\"repetitions\":2"))
            #expect(json.contains("\"round\":2,\"storeFirst\":false"))
            #expect(json.contains("\"ratio\":{\"median\":"))
        }
        // Nothing is left behind in the store's subdirectories (checked by removeTree not throwing).
    }

    @Test func largeValueGoalJudgesTheMedianRatio() async throws {
        try await withScratch { dir in
            var c = StorageBenchmark.Configuration(directory: dir)
            c.valueSizes = [1 << 20]
            c.maxBytesPerSize = 4 << 20
            c.repetitions = 3
            c.concurrency = 4
            let report = try await StorageBenchmark(c).run()
            let r = try #require(report.results.first)
            #expect(r.records == 4)
            try checkSummary(r, rounds: 3)
            // Three rounds: the median is one of the rounds' ratios.
            let ratio = try #require(r.ratio)
            #expect(r.rounds.compactMap(\.ratio).contains(ratio.median))
            let goal = try #require(report.goals.first)
            #expect(goal.met == (ratio.median >= StorageBenchmark.Goals.largeValueRatio))
            #expect(goal.measured.hasPrefix("median ") && goal.measured.contains("% over 3 rounds, range "))
            #expect(report.table().contains("1 MiB      3  store"))
        }
    }

    @Test func batchDurabilityGroupsCommits() async throws {
        try await withScratch { dir in
            var c = StorageBenchmark.Configuration(directory: dir)
            c.valueSizes = [4 << 10]
            c.maxRecordsPerSize = 200
            c.repetitions = 2
            c.concurrency = 8
            c.durability = .batch
            c.measureRawDisk = false
            let report = try await StorageBenchmark(c).run()
            let r = try #require(report.results.first)
            #expect(r.rounds.count == 2)
            for x in r.rounds {
                #expect(x.metrics.appendedRecords == 200)
                #expect(x.metrics.syncs >= 1)
                #expect(x.metrics.syncs <= 201)  // one per batch, plus the directory sync of the new segment
                #expect(x.rawEndSync == nil && x.ratio == nil)
            }
            #expect(r.rawEndSync == nil && r.ratio == nil)
            let perSync = try #require(r.recordsPerSync)
            #expect(perSync.min <= perSync.median && perSync.median <= perSync.max)
            #expect(report.table().contains("4 KiB"))
            // The benchmark removed every round's store directory.
            #expect(try PosixFileSystem().contentsOfDirectory(dir).isEmpty)
        }
    }

    @Test func spreads() throws {
        let odd = try #require(StorageBenchmark.Spread([3, 1, 2]))
        #expect(odd.median == 2 && odd.min == 1 && odd.max == 3)
        let even = try #require(StorageBenchmark.Spread([4, 1]))
        #expect(even.median == 2.5 && even.min == 1 && even.max == 4)
        let one = try #require(StorageBenchmark.Spread([5]))
        #expect(one.median == 5 && one.min == 5 && one.max == 5)
        #expect(StorageBenchmark.Spread([]) == nil)
    }

    @Test func configurationProblems() {
        var c = StorageBenchmark.Configuration(directory: "/nonexistent")
        #expect(c.problem == nil)
        #expect(c.repetitions == 3)
        #expect(c.recordCount(forValueSize: 4 << 10) == 100_000)
        #expect(c.recordCount(forValueSize: 1 << 20) == 2048)
        c.repetitions = 0
        #expect(c.problem != nil)
        c.repetitions = 21
        #expect(c.problem != nil)
        c.repetitions = 20
        #expect(c.problem == nil)
        c.valueSizes = [32 << 20]
        #expect(c.problem != nil)
        c.valueSizes = [4096]
        c.concurrency = 0
        #expect(c.problem != nil)
    }

    @Test func recordBytesCountKeyDigits() {
        var c = StorageBenchmark.Configuration(directory: "/nonexistent")
        c.maxRecordsPerSize = 12
        c.keySpace = 11
        // Keys bench/4096/0 ... bench/4096/10, then bench/4096/0 again: one- and two-digit suffixes.
        let prefix = "bench/4096/".utf8.count
        let keys = (0..<12).map { prefix + String($0 % 11).utf8.count }.reduce(0, +)
        #expect(c.recordBytes(forValueSize: 4096) == 12 * (RecordHeader.overhead + 4096) + keys)
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

