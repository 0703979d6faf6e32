/// A min-heap of events by (time, insertion order): events at the same time run in the order
/// they were scheduled, so a run depends on nothing but its seed.
struct EventQueue<Event> {
    private struct Entry {
        var at: UInt64
        var order: UInt64
        var event: Event
    }

    private var heap: [Entry] = []
    private var counter: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ event: Event, at: UInt64) {
        counter += 1
        heap.append(Entry(at: at, order: counter, event: event))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.less(heap[i], heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    /// The time of the next event, if any.
    var nextTime: UInt64? { heap.first?.at }

    mutating func pop() -> (at: UInt64, event: Event)? {
        guard !heap.isEmpty else { return nil }
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && Self.less(heap[l], heap[m]) { m = l }
                if r < heap.count && Self.less(heap[r], heap[m]) { m = r }
                guard m != i else { break }
                heap.swapAt(i, m)
                i = m
            }
        }
        return (top.at, top.event)
    }

    private static func less(_ a: Entry, _ b: Entry) -> Bool {
        a.at != b.at ? a.at < b.at : a.order < b.order
    }
}
