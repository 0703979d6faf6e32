import CatenaCore
import Foundation

/// What `catena bench` asks of a running cluster: which operations in which proportions, on
/// which keys, with values of which sizes. Parsed from the command line's text forms; every
/// random choice comes from a generator seeded by ``seed``.
public struct LoadWorkload: Sendable, Hashable {
    /// One kind of request the load generator makes.
    public enum Operation: String, CaseIterable, Sendable, Hashable, Codable, Comparable {
        /// A put of a new value under a key.
        case put
        /// A get of a key's whole value.
        case get
        /// A delete of a key.
        case delete
        /// A head (the object's information, no value).
        case head
        /// A list of up to `listLimit` keys from a key on.
        case list

        public static func < (a: Self, b: Self) -> Bool {
            allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
        }

        /// Whether it writes.
        public var isWrite: Bool { self == .put || self == .delete }
    }

    /// Operations and their weights, as `put=50,get=45,delete=3,head=1,list=1`.
    public struct Mix: Sendable, Hashable, CustomStringConvertible {
        /// Each operation with its weight (positive), in the order given.
        public private(set) var weights: [(operation: Operation, weight: Int)]
        private var total: Int

        /// Parses `op=weight` pairs separated by commas; weights are relative (they need not
        /// add up to 100). An operation may appear once.
        public init(parsing text: String) throws(CatenaError) {
            var weights: [(operation: Operation, weight: Int)] = []
            for item in text.split(separator: ",") {
                let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, let operation = Operation(rawValue: parts[0].lowercased()), let weight = Int(parts[1]), weight >= 0 else {
                    throw CatenaError(.invalidArgument, "--mix: '\(item)' is not OP=WEIGHT with OP one of \(Operation.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                guard !weights.contains(where: { $0.operation == operation }) else {
                    throw CatenaError(.invalidArgument, "--mix names \(operation.rawValue) twice")
                }
                if weight > 0 { weights.append((operation, weight)) }
            }
            guard !weights.isEmpty else { throw CatenaError(.invalidArgument, "--mix: no operation has a positive weight") }
            self.weights = weights
            self.total = weights.reduce(0) { $0 + $1.weight }
        }

        /// The operation a uniform random `draw` picks.
        public func pick(_ draw: UInt64) -> Operation {
            var r = Int(draw % UInt64(total))
            for (operation, weight) in weights {
                if r < weight { return operation }
                r -= weight
            }
            return weights[weights.count - 1].operation
        }

        /// Whether the mix has `operation`.
        public func contains(_ operation: Operation) -> Bool { weights.contains { $0.operation == operation } }

        public var description: String { weights.map { "\($0.operation.rawValue)=\($0.weight)" }.joined(separator: ",") }

        public static func == (a: Self, b: Self) -> Bool { a.description == b.description }
        public func hash(into hasher: inout Hasher) { hasher.combine(description) }
    }

    /// Value sizes: `4KiB` (fixed), `1KiB-64KiB` (uniform in the range) or
    /// `4KiB=90,1MiB=10` (each size with a weight).
    public enum SizeDistribution: Sendable, Hashable, CustomStringConvertible {
        /// Every value this many bytes.
        case fixed(Int)
        /// Uniform in the range (bounds included).
        case uniform(ClosedRange<Int>)
        /// Each size with its weight.
        case weighted([Int: Int])

        /// Parses one of the three forms.
        public init(parsing text: String) throws(CatenaError) {
            func size(_ s: some StringProtocol) throws(CatenaError) -> Int {
                guard let n = parseSize(String(s)), n >= 0 else { throw CatenaError(.invalidArgument, "--size: cannot read '\(s)' as a size (e.g. 4KiB)") }
                return n
            }
            if text.contains("=") {
                var weights: [Int: Int] = [:]
                for item in text.split(separator: ",") {
                    let parts = item.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2, let weight = Int(parts[1].trimmingCharacters(in: .whitespaces)), weight > 0 else {
                        throw CatenaError(.invalidArgument, "--size: '\(item)' is not SIZE=WEIGHT")
                    }
                    weights[try size(parts[0]), default: 0] += weight
                }
                self = .weighted(weights)
            } else if let dash = text.firstIndex(of: "-") {
                let low = try size(text[..<dash]), high = try size(text[text.index(after: dash)...])
                guard low <= high else { throw CatenaError(.invalidArgument, "--size: the range \(text) is empty") }
                self = .uniform(low...high)
            } else {
                self = .fixed(try size(text))
            }
        }

        /// The smallest size it can draw.
        public var smallest: Int {
            switch self {
            case .fixed(let n): n
            case .uniform(let r): r.lowerBound
            case .weighted(let w): w.keys.min() ?? 0
            }
        }

        /// The largest size it can draw.
        public var largest: Int {
            switch self {
            case .fixed(let n): n
            case .uniform(let r): r.upperBound
            case .weighted(let w): w.keys.max() ?? 0
            }
        }

        /// The size a uniform random `draw` picks.
        public func pick(_ draw: UInt64) -> Int {
            switch self {
            case .fixed(let n):
                return n
            case .uniform(let r):
                return r.lowerBound + Int(draw % UInt64(r.upperBound - r.lowerBound + 1))
            case .weighted(let w):
                let sorted = w.sorted { $0.key < $1.key }
                var x = Int(draw % UInt64(sorted.reduce(0) { $0 + $1.value }))
                for (size, weight) in sorted {
                    if x < weight { return size }
                    x -= weight
                }
                return sorted[sorted.count - 1].key
            }
        }

        public var description: String {
            switch self {
            case .fixed(let n): sizeName(n)
            case .uniform(let r): "\(sizeName(r.lowerBound))-\(sizeName(r.upperBound))"
            case .weighted(let w): w.sorted { $0.key < $1.key }.map { "\(sizeName($0.key))=\($0.value)" }.joined(separator: ",")
            }
        }
    }

    /// How keys are drawn from the key space.
    public enum KeyDistribution: String, Sendable, Hashable, CaseIterable, Codable {
        /// Every key equally likely.
        case uniform
        /// Zipfian (YCSB's constant 0.99): a few keys take most requests; the hot keys are
        /// scattered over the key space, as YCSB's scrambled zipfian does.
        case zipf
        /// Writes go to the keys in turn; reads, deletes and lists favour the most recently
        /// written ones (zipfian over recency), as YCSB's `latest`.
        case latest
    }

    /// Operations and weights.
    public var mix: Mix
    /// Value sizes of puts.
    public var sizes: SizeDistribution
    /// Keys in the key space: `prefix` followed by a zero-padded number below this.
    public var keys: Int
    /// How keys are drawn.
    public var keyDistribution: KeyDistribution
    /// The prefix of every key the load touches (lists list under it).
    public var prefix: String
    /// Keys a list asks for.
    public var listLimit: Int = 100
    /// Seeds every random choice.
    public var seed: UInt64

    /// A workload; `keys` must be positive.
    public init(mix: Mix, sizes: SizeDistribution, keys: Int, keyDistribution: KeyDistribution, prefix: String, seed: UInt64) {
        self.mix = mix
        self.sizes = sizes
        self.keys = keys
        self.keyDistribution = keyDistribution
        self.prefix = prefix
        self.seed = seed
    }

    /// The key with number `index` (zero-padded, so keys list in number order).
    public func key(_ index: Int) -> String {
        let digits = String(index)
        return prefix + String(repeating: "0", count: max(0, keyDigits - digits.count)) + digits
    }

    /// The number of the key `key`, if it is one of this workload's.
    public func index(ofKey key: some StringProtocol) -> Int? {
        guard key.hasPrefix(prefix) else { return nil }
        let digits = key.dropFirst(prefix.count)
        guard digits.count == keyDigits, let n = Int(digits), n >= 0, n < keys else { return nil }
        return n
    }

    private var keyDigits: Int { max(8, String(max(0, keys - 1)).count) }
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`30s`, `2m`, `500ms`); a
/// bare number is seconds.
public func parseDuration(_ text: String) -> Duration? {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let number = t.prefix { $0.isNumber || $0 == "." }
    guard let value = Double(number), value >= 0, value.isFinite else { return nil }
    let scale: Double
    switch t.dropFirst(number.count) {
    case "ms": scale = 1e-3
    case "", "s": scale = 1
    case "m", "min": scale = 60
    case "h": scale = 3600
    default: return nil
    }
    return .nanoseconds(Int64(value * scale * 1e9))
}

/// Draws key numbers for one worker of a load: uniform, zipfian (scrambled) or latest.
struct KeyChooser: Sendable {
    let keys: Int
    let distribution: LoadWorkload.KeyDistribution
    private let zipf: Zipfian?
    private let scramble: Int

    init(keys: Int, distribution: LoadWorkload.KeyDistribution) {
        self.keys = keys
        self.distribution = distribution
        zipf = distribution == .uniform ? nil : Zipfian(items: keys)
        // An odd multiplier coprime to `keys`: rank -> key is a permutation, so the hot keys
        // of the zipfian are spread over the key space rather than all at its start.
        var m = 0x9E37_79B9 % max(1, keys)
        while keys > 1 && Self.gcd(m, keys) != 1 { m += 1 }
        scramble = max(1, m)
    }

    /// The key a read (or delete, or list) of `worker` asks for; `newest` is the key most
    /// recently taken by a write (for `latest`).
    func read(_ random: inout SplitMix64, newest: Int) -> Int {
        switch distribution {
        case .uniform: return Int(random.next() % UInt64(keys))
        case .zipf: return zipf!.next(&random) * scramble % keys
        case .latest: return ((newest - zipf!.next(&random)) % keys + keys) % keys
        }
    }

    /// The key a write asks for; `next` gives the next key in turn (for `latest`).
    func write(_ random: inout SplitMix64, next: () -> Int) -> Int {
        switch distribution {
        case .uniform, .zipf: read(&random, newest: 0)
        case .latest: next() % keys
        }
    }

    private static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994): ranks 0..<items, rank 0 most popular, constant 0.99.
struct Zipfian: Sendable {
    static let theta = 0.99
    let items: Int
    private let zetan: Double
    private let alpha: Double
    private let eta: Double
    private let half: Double

    init(items: Int) {
        let theta = Self.theta
        self.items = items
        var zeta = 0.0
        for i in 1...max(1, items) { zeta += 1 / pow(Double(i), theta) }
        zetan = zeta
        let zeta2 = 1 + 1 / pow(2, theta)
        alpha = 1 / (1 - theta)
        eta = items < 2 ? 0 : (1 - pow(2 / Double(items), 1 - theta)) / (1 - zeta2 / zeta)
        half = 1 + pow(0.5, theta)
    }

    /// A rank drawn from the distribution.
    func next(_ random: inout SplitMix64) -> Int {
        let u = Double(random.next() >> 11) / Double(1 << 53)
        let uz = u * zetan
        if uz < 1 || items < 2 { return 0 }
        if uz < half { return 1 }
        return min(items - 1, Int(Double(items) * pow(eta * u - eta + 1, alpha)))
    }
}
