import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import Foundation
import Synchronization
import Testing

extension InProcessChainTests {
    /// Multipart uploads in S3's shape, through a whole chain and the client library.
    @Suite("Multipart uploads")
    struct Multipart {
        @Test("parts uploaded in parallel and out of order, replaced, listed; completion makes the object visible at once", .timeLimit(.minutes(1)))
        func lifecycle() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let upload = try await client.createMultipartUpload("videos/big.mp4", contentType: "video/mp4", metadata: ["owner": "ada"])
                let pending = try await client.listMultipartUploads(prefix: "videos/")
                #expect(pending.uploads.map(\.id) == [upload.id])
                #expect(pending.uploads.first?.contentType == "video/mp4" && pending.uploads.first?.userMetadata == ["owner": "ada"])
                // Parts of 2.5, 1.5 and 0.3 MiB (several chunks each), uploaded at once, in reverse order.
                let bodies = [pseudoRandomBytes(5 << 19, seed: 1), pseudoRandomBytes(3 << 19, seed: 2), pseudoRandomBytes(300_000, seed: 3)]
                let stored = try await withThrowingTaskGroup(of: UploadedPart.self) { group in
                    for number in [3, 2, 1] {
                        group.addTask { try await client.uploadPart(upload, number: number, bodies[number - 1]) }
                    }
                    var parts: [UploadedPart] = []
                    for try await part in group { parts.append(part) }
                    return parts.sorted { $0.number < $1.number }
                }
                #expect(stored.map(\.size) == bodies.map { UInt64($0.count) })
                #expect(stored.map(\.checksum) == bodies.map { XXH3.hash($0) })
                // Nothing is visible before completion.
                #expect(try await client.exists("videos/big.mp4") == false)
                // Part 2 again, streamed: it replaces the first one.
                let second = pseudoRandomBytes(1 << 20 | 17, seed: 22)
                let pieces = AsyncStreamOfPieces(second, pieceSize: 100_000)
                let replaced = try await client.uploadPart(upload, number: 2, streaming: pieces)
                let listed = try await client.listParts(upload)
                #expect(listed.parts.map(\.number) == [1, 2, 3])
                #expect(listed.parts[1].checksum == replaced.checksum && listed.parts[1].size == UInt64(second.count))
                #expect(listed.upload.partCount == 3)
                // Completion names the old part 2: refused, nothing changes.
                do throws(CatenaError) {
                    try await client.completeMultipartUpload(upload, parts: [stored[0], stored[1]])
                    Issue.record("a completion naming a replaced part succeeded")
                } catch {
                    #expect(error.code == .invalidPart)
                }
                // Out of order: refused.
                await #expect(throws: CatenaError.self) { try await client.completeMultipartUpload(upload, parts: [replaced, stored[0]]) }
                // Parts 1 and 2 make the object; part 3 is left out.
                let receipt = try await client.completeMultipartUpload(upload, parts: [stored[0], replaced])
                let expected = bodies[0] + second
                #expect(receipt.size == UInt64(expected.count))
                let object = try await client.get("videos/big.mp4")
                #expect(object.bytes == expected)
                #expect(object.info.contentType == "video/mp4" && object.info.userMetadata == ["owner": "ada"])
                #expect(object.info.parts == [PartSummary(size: UInt64(bodies[0].count), checksum: stored[0].checksum),
                                              PartSummary(size: UInt64(second.count), checksum: replaced.checksum)])
                #expect(object.info.contentChecksum == receipt.contentChecksum)
                #expect(receipt.contentChecksum == Manifest.checksum(ofParts: object.info.parts))
                // Ranged reads across the part boundary and inside each part.
                var rng = SplitMix64(seed: 7)
                for _ in 0..<20 {
                    let start = Int.random(in: 0..<expected.count, using: &rng)
                    let end = min(expected.count, start + Int.random(in: 1...(3 << 20), using: &rng))
                    let range = try await client.get("videos/big.mp4", range: UInt64(start)..<UInt64(end))
                    #expect(range.bytes == Array(expected[start..<end]))
                }
                // The upload is gone.
                #expect(try await client.listMultipartUploads().uploads.isEmpty)
                await #expect(throws: CatenaError.self) { try await client.listParts(upload) }
                do throws(CatenaError) {
                    try await client.uploadPart(upload, number: 4, [1, 2, 3])
                    Issue.record("a part was added to a completed upload")
                } catch {
                    #expect(error.code == .noSuchUpload)
                }
                // A server-side copy keeps the parts (the checksum is defined over them).
                try await client.copy(from: "videos/big.mp4", to: "videos/copy.mp4")
                let copy = try await client.get("videos/copy.mp4")
                #expect(copy.bytes == expected && copy.info.parts == object.info.parts && copy.info.contentChecksum == receipt.contentChecksum)
                // A copy whose condition fails at its manifest leaves no upload open behind it.
                do throws(CatenaError) {
                    try await client.copy(from: "videos/big.mp4", to: "videos/copy.mp4", condition: .absent)
                    Issue.record("a copy onto an existing key succeeded with .absent")
                } catch {
                    #expect(error.code == .preconditionFailed)
                }
                #expect(try await client.listMultipartUploads().uploads.isEmpty)
            }
        }

        @Test("abort drops the upload; uploads are listed by prefix, page by page", .timeLimit(.minutes(1)))
        func abortAndListing() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                var uploads: [MultipartUpload] = []
                for key in ["b/2", "a/1", "b/1", "b/1", "c"] { uploads.append(try await client.createMultipartUpload(key)) }
                try await client.uploadPart(uploads[0], number: 1, [1, 2, 3])
                var seen: [String] = []
                var cursor: UploadCursor?
                repeat {
                    let page = try await client.listMultipartUploads(prefix: "b/", after: cursor, limit: 2)
                    #expect(page.uploads.count <= 2)
                    seen += page.uploads.map(\.key.string)
                    cursor = page.nextCursor
                } while cursor != nil
                #expect(seen == ["b/1", "b/1", "b/2"])
                try await client.abortMultipartUpload(uploads[0])
                #expect(try await client.listMultipartUploads(prefix: "b/2").uploads.isEmpty)
                do throws(CatenaError) {
                    try await client.abortMultipartUpload(uploads[0])
                    Issue.record("an aborted upload was aborted again")
                } catch {
                    #expect(error.code == .noSuchUpload)
                }
                do throws(CatenaError) {
                    try await client.completeMultipartUpload(uploads[0], parts: [UploadedPart(number: 1, size: 3, checksum: XXH3.hash([1, 2, 3] as [UInt8]))])
                    Issue.record("an aborted upload was completed")
                } catch {
                    #expect(error.code == .noSuchUpload)
                }
                #expect(try await client.exists("b/2") == false)
                #expect(try await client.listMultipartUploads().uploads.count == 4)
            }
        }

        @Test("a file put in parallel parts reads back byte for byte, with progress", .timeLimit(.minutes(1)))
        func filePut() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let path = FileManager.default.temporaryDirectory.appendingPathComponent("catena-multipart-\(getpid())").path
                defer { unlink(path) }
                let bytes = pseudoRandomBytes(5 << 20 | 3, seed: 9)
                FileManager.default.createFile(atPath: path, contents: Data(bytes))
                let progress = ProgressLog()
                let receipt = try await client.putMultipart("file", contentsOf: path, partSize: 2 << 20, parallelism: 3) { done, total in
                    progress.add(done, total)
                }
                #expect(receipt.size == UInt64(bytes.count))
                let info = try await client.head("file")
                #expect(info.parts.map(\.size) == [2 << 20, 2 << 20, 1 << 20 | 3])
                #expect(try await client.get("file").bytes == bytes)
                let last = try #require(progress.last)
                #expect(last.0 == UInt64(bytes.count) && last.1 == UInt64(bytes.count))
                #expect(try await client.listMultipartUploads().uploads.isEmpty)
            }
        }
    }
}

/// Bytes as an async sequence of pieces.
struct AsyncStreamOfPieces: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let bytes: [UInt8]
    let pieceSize: Int

    init(_ bytes: [UInt8], pieceSize: Int) {
        self.bytes = bytes
        self.pieceSize = pieceSize
    }

    func makeAsyncIterator() -> Iterator { Iterator(bytes: bytes[...], pieceSize: pieceSize) }

    struct Iterator: AsyncIteratorProtocol {
        var bytes: ArraySlice<UInt8>
        let pieceSize: Int
        mutating func next() async -> [UInt8]? {
            guard !bytes.isEmpty else { return nil }
            defer { bytes = bytes.dropFirst(pieceSize) }
            return Array(bytes.prefix(pieceSize))
        }
    }
}

/// The progress callbacks a transfer made.
final class ProgressLog: Sendable {
    private let calls = Mutex<[(UInt64, UInt64?)]>([])
    func add(_ done: UInt64, _ total: UInt64?) { calls.withLock { $0.append((done, total)) } }
    var last: (UInt64, UInt64?)? { calls.withLock { $0.last } }
}
