import CatenaBench
import CatenaCore
import CatenaStorage
import Testing

@Suite("CatchUpBenchmark")
struct CatchUpBenchmarkTests {
    @Test("copies a small log with both codecs in alternating order, reports every copy and removes its stores",
          .timeLimit(.minutes(1)))
    func smallRun() async throws {
        let dir = try ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-catchup-test")
        defer { try? ScratchSpace.removeTree(dir) }
        var c = CatchUpBenchmark.Configuration(directory: dir)
        c.volume = 6 << 20
        c.valueSize = 100 << 10
        c.maxChunkBytes = 1 << 20
        c.rounds = 2
        let report = try await CatchUpBenchmark(c).run()

        #expect(report.records == 61)
        #expect(report.copies.map(\.codec) == [.lz4, .raw, .raw, .lz4])
        #expect(report.copies.map(\.round) == [1, 1, 2, 2])
        for copy in report.copies {
            #expect(copy.records == 61)
            #expect(copy.recordBytes == report.recordBytes)
            #expect(copy.recordBytes > 61 * (100 << 10))
            #expect(copy.chunks >= 6, "1 MiB chunks of a 6 MiB log")
            #expect(copy.megabytesPerSecond > 0)
        }
        // Half of every value is repeated text: LZ4 roughly halves it; raw chunks only add framing.
        let lz4 = try #require(report.median(.lz4))
        let raw = try #require(report.median(.raw))
        #expect(lz4.compressionRatio > 1.6 && lz4.compressionRatio < 2.5)
        #expect(raw.compressionRatio > 0.99 && raw.compressionRatio <= 1)
        // The stores are gone; the directory given is kept.
        #expect(try PosixFileSystem().contentsOfDirectory(dir).isEmpty)
    }
}
