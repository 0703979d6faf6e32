// This target imports the client library alone (and the cluster harness, for a cluster to talk
// to): every type the README's example names must come from `import CatenaClient`.
import CatenaClient
import CatenaClusterTestSupport
import Foundation
import Synchronization
import Testing

@Suite("The README's client example")
struct ReadmeExampleTests {
    @Test("runs as written against a 3-node chain, with the client's types from `import CatenaClient` alone",
          .timeLimit(.minutes(1)))
    func readmeExample() async throws {
        try await withTestCluster { cluster in
            let master = cluster.masterAddress.description
            var configuration = CatenaClient.Configuration()
            configuration.clusterID = TestCluster.clusterID
            configuration.connectionLimits = ConnectionLimits()
            let jpegData = Data([0xFF, 0xD8, 0xFF, 0xE0])
            let chunks = AsyncStream<[UInt8]> { c in
                for i in 0..<3 { c.yield([UInt8](repeating: UInt8(i), count: 700_000)) }
                c.finish()
            }

            // From the README (its addresses and cluster id aside).
            let store = try CatenaClient(masters: [master], configuration: configuration)   // connects on first use
            try await store.connect()      // optional: fail fast at start-up if no master answers

            let receipt = try await store.put("photos/cat.jpg", jpegData, contentType: "image/jpeg",
                                              metadata: ["camera": "x100"])
            let lsn: LSN = receipt.lsn

            let object = try await store.get("photos/cat.jpg")  // bytes + metadata, checksum verified
            let info: ObjectInfo = object.info
            #expect(object.data == jpegData)
            #expect(info.contentType == "image/jpeg" && info.userMetadata == ["camera": "x100"] && info.lsn == lsn)
            try await store.put("users/42/avatar", ByteBuffer(bytes: [1, 2, 3]))
            let avatar = try await store.get("users/42/avatar", upTo: 256 << 10)
            #expect(avatar.bytes == [1, 2, 3])

            let head = try await store.head("photos/cat.jpg")
            #expect(head.size == 4)
            let fromTail = try await store.with(readMode: .tail).get("photos/cat.jpg")
            #expect(fromTail.bytes == [UInt8](jpegData))
            let quick = try await store.with(readMode: .any).head("photos/cat.jpg")
            #expect(quick.size == 4)
            let logged = try await store.with(ack: .head).put("logs/1", Array("started".utf8))
            let token = store.session.token
            #expect(try Session(token: token).lsn.seq >= logged.lsn.seq)
            let later = store.with(readMode: .any, session: try Session(token: token))
            #expect(try await later.get("logs/1").bytes == Array("started".utf8))
            let page: ListPage = try await store.list(prefix: "photos/", limit: 100)
            #expect(page.objects.map(\.key) == [try Key("photos/cat.jpg")])
            var listed: [String] = []
            for try await info in store.listAll(prefix: "photos/") { listed.append(info.key.string) }
            #expect(listed == ["photos/cat.jpg"])
            try await store.delete("photos/cat.jpg")
            let gone = try await store.exists("photos/cat.jpg") == false
            #expect(gone)
            let results: [DeleteResult] = await store.delete(["tmp/a", "tmp/b"])   // one DeleteResult per key, in order
            #expect(results.map(\.key) == ["tmp/a", "tmp/b"])
            try await store.put("counters/visits", [0])
            @Sendable func next(_ bytes: [UInt8]) -> [UInt8] { [bytes[0] + 1] }

            try await store.put("locks/job-7", Array("worker-1".utf8), condition: .absent)
            let current = try await store.get("counters/visits")
            try await store.put("counters/visits", next(current.bytes), condition: .version(current.info.lsn))
            try await store.delete("locks/job-7", condition: .contentChecksum(XXH3.hash(Array("worker-1".utf8))))

            let order = [UInt8](repeating: 5, count: 10)
            do { try await store.put("orders/17", order) } catch let error as CatenaError where error.requestID != nil {
                if case .notApplied = try await store.outcome(ofWrite: error.requestID!, key: "orders/17") { /* write it again */ }
            }
            #expect(try await store.outcome(ofWrite: RequestID.random(), key: "orders/17") == .notApplied)

            #expect(try await store.get("counters/visits").bytes == [1])
            #expect(try await store.exists("locks/job-7") == false)
            do {
                try await store.put("counters/visits", [9], condition: .version(current.info.lsn))
                Issue.record("a compare-and-swap on a superseded version was applied")
            } catch let error as CatenaError {
                #expect(error.code == .preconditionFailed)
            }
            do {
                _ = try await store.get("photos/cat.jpg")
                Issue.record("a deleted object was read")
            } catch let error as CatenaError {
                #expect(error.code == .notFound)
            }

            let source = cluster.directory + "/db.tar", copy = cluster.directory + "/db-copy.tar"
            try Data(repeating: 7, count: 3_000_000).write(to: URL(fileURLWithPath: source))
            let reported = Mutex<UInt64>(0)
            @Sendable func report(_ done: UInt64, _ total: UInt64?) { reported.withLock { $0 = done } }
            try await store.put("backups/db.tar", contentsOf: source) { done, total in report(done, total) }
            try await store.get("backups/db.tar", into: copy)
            #expect(reported.withLock { $0 } == 3_000_000)
            #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(repeating: 7, count: 3_000_000))

            try await store.put("backups/db.tar", streaming: chunks)
            var size = 0
            for try await chunk in try await store.getStreaming("backups/db.tar") { size += chunk.count }
            #expect(size == 2_100_000)
            try await store.copy(from: "backups/db.tar", to: "archive/db.tar")   // inside the cluster: no bytes come here
            #expect(try await store.head("archive/db.tar").size == 2_100_000)
            let part = try await store.get("backups/db.tar", range: 100..<200)
            #expect(part.bytes == [UInt8](repeating: 0, count: 100) && part.info.size == 2_100_000)
            // Multipart uploads (the README's file, made here).
            let video = FileManager.default.temporaryDirectory.appendingPathComponent("catena-readme-\(getpid()).mp4").path
            defer { unlink(video) }
            let videoBytes = (0..<((8 << 20) + 5000)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            FileManager.default.createFile(atPath: video, contents: Data(videoBytes))
            let upload = try await store.createMultipartUpload("videos/talk.mp4", contentType: "video/mp4")
            async let first = store.uploadPart(upload, number: 1, contentsOf: video, range: 0..<(8 << 20))
            async let second = store.uploadPart(upload, number: 2, contentsOf: video, range: (8 << 20)..<UInt64.max)
            try await store.completeMultipartUpload(upload, parts: [try await first, try await second])
            let talk = try await store.head("videos/talk.mp4")
            #expect(talk.parts.map(\.size) == [8 << 20, 5000] && talk.contentType == "video/mp4")
            try await store.putMultipart("videos/talk.mp4", contentsOf: video, partSize: 8 << 20, parallelism: 4)
            #expect(try await store.get("videos/talk.mp4", range: (8 << 20) - 10..<(8 << 20) + 10).bytes == Array(videoBytes[((8 << 20) - 10)..<((8 << 20) + 10)]))
            #expect(try await store.listMultipartUploads().uploads.isEmpty)
            let chain: ChainConfiguration? = store.chainConfiguration
            #expect(chain?.members.count == 3)
            await store.close()            // final: every later call throws `closed`
        }
    }
}
