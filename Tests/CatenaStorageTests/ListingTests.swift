import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Foundation
import Synchronization
import Testing

@Suite("Listing in steps")
struct ListingTests {
    /// `count` live keys `prefix/000000`… appended in batches of 1,000, values one byte each.
    /// Returns the next seq.
    static func fill(_ store: Store, prefix: String, count: Int, firstSeq: UInt64 = 1) async throws -> UInt64 {
        var seq = firstSeq
        for start in stride(from: 0, to: count, by: 1000) {
            var batch: [EncodedRecord] = []
            for i in start..<min(count, start + 1000) {
                batch.append(put("\(prefix)/\(String(format: "%06d", i))", [UInt8(truncatingIfNeeded: i)], seq: seq))
                seq += 1
            }
            try await store.append(batch)
        }
        return seq
    }

    /// Appends pairs of keys, `aaa/i` then (once that is durable) `zzz/i`, while another thread
    /// lists every key again and again. A listing that holds the store's lock for its whole walk
    /// sees one moment: if it lists `zzz/i` it lists `aaa/i`, durable before it. A listing that
    /// lets appends in between its steps walks past `aaa/` before the pair is appended and
    /// reaches `zzz/` after: it lists `zzz/i` without `aaa/i` — proof that both appends
    /// completed, lock and all, during one listing call. No timing is assumed either way.
    @Test("a listing that walks 100,000 keys does not hold appends up: whole appends complete while one listing call runs",
          .timeLimit(.minutes(2)))
    func longListingDoesNotBlockAppends() async throws {
        let store = try await Fixture(configure: { $0.durability = .none }).open()
        var seq = try await Self.fill(store, prefix: "many", count: 100_000)

        let stop = Atomic<Bool>(false)
        let exited = Atomic<Bool>(false)
        let calls = Atomic<Int>(0)
        let tornCalls = Atomic<Int>(0)
        let incomplete = Atomic<Int>(0)
        let lister = Thread {
            while !stop.load(ordering: .acquiring) {
                guard let page = try? store.list(limit: 1_000_000) else {
                    incomplete.add(1, ordering: .relaxed)
                    continue
                }
                var early = Set<String>()
                var late: [String] = []
                var many = 0
                for info in page.objects {
                    let key = info.key.string
                    if key.hasPrefix("aaa/") { early.insert(String(key.dropFirst(4))) }
                    else if key.hasPrefix("zzz/") { late.append(String(key.dropFirst(4))) }
                    else if key.hasPrefix("many/") { many += 1 }
                }
                // Keys live throughout the call are all listed.
                if many != 100_000 || page.nextCursor != nil { incomplete.add(1, ordering: .relaxed) }
                if late.contains(where: { !early.contains($0) }) { tornCalls.add(1, ordering: .relaxed) }
                calls.add(1, ordering: .releasing)
            }
            exited.store(true, ordering: .releasing)
        }
        lister.start()
        defer { stop.store(true, ordering: .releasing) }

        var pairs = 0
        while pairs < 3000 && tornCalls.load(ordering: .relaxed) < 3 {
            try await store.append([put("aaa/\(pairs)", [1], seq: seq)])
            try await store.append([put("zzz/\(pairs)", [2], seq: seq + 1)])
            seq += 2
            pairs += 1
        }
        stop.store(true, ordering: .releasing)
        while !exited.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(1)) }
        #expect(tornCalls.load(ordering: .relaxed) > 0,
                "\(pairs) pairs appended over \(calls.load(ordering: .acquiring)) listing calls; no call saw a pair appended while it ran")
        #expect(incomplete.load(ordering: .relaxed) == 0, "a listing missed keys that were live throughout it")
        #expect(try store.allKeys(prefix: "zzz/").count == pairs)
        await store.close()
    }

    @Test("pages listed in steps of 1, 2, 3 or 1,024 index entries are the model's pages: byte order, prefixes, cursors, deleted and re-added keys",
          arguments: [1, 2, 3, 1024])
    func steppedPagesMatchTheModel(_ step: Int) async throws {
        let store = try await Fixture(configure: { $0.durability = .none; $0.listStepEntries = step }).open()
        var rng = SplitMix64(seed: UInt64(step))
        var records: [EncodedRecord] = []
        var seq: UInt64 = 1
        let names = (0..<300).map { i in ["a", "ab", "b", "b/", "caf\u{E9}", "cafe\u{301}", "z"][i % 7] + "/\(i % 53)" }
        for round in 0..<6 {
            var batch: [EncodedRecord] = []
            for _ in 0..<150 {
                let name = names[Int(rng.next() % UInt64(names.count))]
                batch.append(rng.next() % 3 == 0 ? del(name, seq: seq) : put(name, [UInt8(round)], seq: seq))
                seq += 1
            }
            try await store.append(batch)
            records += batch
            // Keyed by Key, not String: the NFC and NFD "café" are two keys.
            var state: [Key: Bool] = [:]
            for r in records { state[r.key] = r.type != .delete }
            let live = state.filter(\.value).keys.sorted()
            for _ in 0..<40 {
                let prefix = Array(["", "a", "ab", "b", "b/", "caf", "z/1", "q"][Int(rng.next() % 8)].utf8)
                let after: Key? = rng.next() % 2 == 0 ? nil : live.isEmpty ? nil : live[Int(rng.next() % UInt64(live.count))]
                let limit = 1 + Int(rng.next() % 40)
                let matching = live.filter { k in k.hasPrefix(prefix) && (after.map { $0 < k } ?? true) }
                let page = try store.list(prefix: prefix, after: after, limit: limit)
                #expect(page.objects.map(\.key) == Array(matching.prefix(limit)), "round \(round), prefix \(prefix), after \(after.map { "\($0)" } ?? "-"), limit \(limit)")
                #expect(page.nextCursor == (matching.count > limit ? matching[limit - 1] : nil))
            }
        }
        await store.close()
    }
}

@Suite("Listing with a delimiter")
struct DelimiterListingTests {
    /// The listing a delimiter asks for, computed from the live keys alone: each key under the
    /// prefix, or its common prefix (cut after the first delimiter past the prefix) once.
    static func reference(_ live: [String], prefix: String, delimiter: String) -> [String] {
        var out: [String] = []
        for key in live.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) where key.utf8.starts(with: prefix.utf8) {
            let rest = key.utf8.dropFirst(prefix.utf8.count)
            if let range = String(decoding: rest, as: UTF8.self).range(of: delimiter) {
                let cut = prefix + String(String(decoding: rest, as: UTF8.self)[..<range.upperBound])
                if out.last != cut { out.append(cut) }
            } else {
                out.append(key)
            }
        }
        return out
    }

    /// Random trees of keys (some deleted), listed page by page at several page sizes and step
    /// sizes: the pages, joined, are the reference listing; no page is larger than its limit.
    @Test("pages of a delimited listing join into the reference listing, for random trees, prefixes and page sizes",
          arguments: [1, 2, 7, 1000])
    func pagesMatchTheReference(limit: Int) async throws {
        let store = try await Fixture(configure: { $0.listStepEntries = 3 }).open()
        var rng = SplitMix64(seed: 40 + UInt64(limit))
        let parts = ["a", "b", "c/", "d/", "é/", "x"]
        var live = Set<String>()
        var seq: UInt64 = 1
        for _ in 0..<300 {
            let depth = Int.random(in: 1...4, using: &rng)
            let key = (0..<depth).map { _ in parts.randomElement(using: &rng)! }.joined()
            if Int.random(in: 0..<5, using: &rng) == 0, live.contains(key) {
                try await store.append([del(key, seq: seq)])
                live.remove(key)
            } else {
                try await store.append([put(key, [1], seq: seq)])
                live.insert(key)
            }
            seq += 1
        }
        for (prefix, delimiter) in [("", "/"), ("c/", "/"), ("d/", "/"), ("", "c/"), ("a", "/"), ("é/", "/"), ("zz", "/")] {
            var joined: [String] = []
            var cursor: Key?
            var pages = 0
            repeat {
                let page = try store.list(prefix: Array(prefix.utf8), after: cursor, limit: limit, delimiter: Array(delimiter.utf8))
                #expect(page.objects.count + page.commonPrefixes.count <= limit)
                let items = (page.objects.map(\.key) + page.commonPrefixes).sorted().map(\.string)
                joined += items
                cursor = page.nextCursor
                pages += 1
            } while cursor != nil && pages < 1000
            #expect(joined == Self.reference(Array(live), prefix: prefix, delimiter: delimiter), "prefix '\(prefix)' delimiter '\(delimiter)'")
            if prefix == "" && delimiter == "/" {
                // The tree has folders at the top: the listing rolls them up.
                #expect(joined.filter { $0.hasSuffix("/") }.count >= 3 && joined.count < live.count)
            }
        }
        // A cursor that is an object's key ending with the delimiter is not a common prefix:
        // prefix "a-" and delimiter "--" make "a--" an object, and "a--x" must follow it.
        for (i, key) in ["a--", "a--x", "a-b"].enumerated() { try await store.append([put(key, [1], seq: seq + UInt64(i))]) }
        var overlapping: [String] = []
        var after: Key?
        repeat {
            let page = try store.list(prefix: Array("a-".utf8), after: after, limit: 1, delimiter: Array("--".utf8))
            overlapping += (page.objects.map(\.key) + page.commonPrefixes).map(\.string)
            after = page.nextCursor
        } while after != nil
        #expect(overlapping == ["a--", "a--x", "a-b"])
        live.formUnion(["a--", "a--x", "a-b"])

        // Without a delimiter: the plain listing.
        let plain = try store.list(prefix: [], after: nil, limit: 10_000, delimiter: [])
        #expect(plain.commonPrefixes.isEmpty && plain.objects.count == live.count)
        await store.close()
    }
}
