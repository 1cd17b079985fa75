package optipicksim

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strings"
)

// The simulated warehouse: aisles 2.5 m apart, bays 1.2 m wide, the depot
// at (0, 0). Distances are in cm, as OptiPick's default unit.
const (
	aisleSpacing   = 250
	baySpacing     = 120
	maxPicksInList = 6 // a cluster (pick list) holds at most this many picks
)

// OptimizeRequest is the body of POST /optimize/{cluster|route}.
type OptimizeRequest struct {
	SiteName string `json:"site_name"`
	WaveID   string `json:"wave_id,omitempty"`
	Purpose  string `json:"purpose,omitempty"`
	Picks    []Pick `json:"picks"`
}

// Pick is one line to pick. LocationID is a string, or a list of strings
// when the item is stored in several places.
type Pick struct {
	PickID     string          `json:"pick_id"`
	LocationID json.RawMessage `json:"location_id"`
	OrderID    string          `json:"order_id,omitempty"`
	ListID     string          `json:"list_id,omitempty"` // the as-is pick list, if not one per order
}

// ExampleRequest is the "Example" warehouse request of the demo: 10 picks
// over 5 orders.
func ExampleRequest() OptimizeRequest {
	picks := []struct{ pick, location, order string }{
		{"p01", "D-14", "o1"}, {"p02", "A-02", "o1"},
		{"p03", "D-15", "o2"}, {"p04", "B-03", "o2"},
		{"p05", "A-03", "o3"}, {"p06", "C-09", "o3"},
		{"p07", "B-04", "o4"}, {"p08", "D-12", "o4"},
		{"p09", "C-08", "o5"}, {"p10", "A-01", "o5"},
	}
	req := OptimizeRequest{SiteName: "Example", WaveID: "wave-1"}
	for _, p := range picks {
		req.Picks = append(req.Picks, Pick{PickID: p.pick, LocationID: json.RawMessage(`"` + p.location + `"`), OrderID: p.order})
	}
	return req
}

type point struct{ X, Y int }

// stop is a valid pick with the places it can be picked from.
type stop struct {
	Pick
	locations []string
	points    []point
}

func manhattan(a, b point) int {
	return abs(a.X-b.X) + abs(a.Y-b.Y)
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// locate turns a location id such as "C-09" into aisle C, bay 9. Ids of
// another form get a stable place from their hash.
func locate(id string) point {
	letters := strings.IndexFunc(id, func(r rune) bool { return r < 'A' || r > 'Z' })
	if letters > 0 && letters <= 2 {
		aisle := 0
		for _, r := range id[:letters] {
			aisle = aisle*26 + int(r-'A') + 1
		}
		bay, digits := 0, 0
		for _, r := range strings.TrimLeft(id[letters:], "-_ ") {
			if r < '0' || r > '9' || digits == 4 {
				break
			}
			bay, digits = bay*10+int(r-'0'), digits+1
		}
		if digits > 0 {
			return point{aisle * aisleSpacing, bay * baySpacing}
		}
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	sum := int(h.Sum32())
	return point{(sum%20 + 1) * aisleSpacing, (sum/20%40 + 1) * baySpacing}
}

// validate splits picks into valid stops and the ids of invalid picks.
func validate(picks []Pick) (stops []stop, invalid []string) {
	for i, p := range picks {
		var locations []string
		var one string
		if json.Unmarshal(p.LocationID, &one) == nil && one != "" {
			locations = []string{one}
		} else if json.Unmarshal(p.LocationID, &locations) != nil {
			locations = nil
		}
		locations = nonEmpty(locations)
		if p.PickID == "" || len(locations) == 0 {
			id := p.PickID
			if id == "" {
				id = fmt.Sprintf("#%d", i)
			}
			invalid = append(invalid, id)
			continue
		}
		s := stop{Pick: p, locations: locations}
		if s.OrderID == "" {
			s.OrderID = p.PickID
		}
		for _, l := range locations {
			s.points = append(s.points, locate(l))
		}
		stops = append(stops, s)
	}
	return stops, invalid
}

func nonEmpty(list []string) []string {
	out := list[:0]
	for _, s := range list {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// visit is a stop in a walk, at the location chosen for it.
type visit struct {
	stop  stop
	place int // index into stop.locations
}

// walkLength is the distance from the depot through visits and back.
func walkLength(visits []visit) int {
	total, at := 0, point{}
	for _, v := range visits {
		next := v.stop.points[v.place]
		total += manhattan(at, next)
		at = next
	}
	return total + manhattan(at, point{})
}

// asIs walks the stops in the given order, each at its first location.
func asIs(stops []stop) []visit {
	visits := make([]visit, len(stops))
	for i, s := range stops {
		visits[i] = visit{stop: s}
	}
	return visits
}

// optimal orders stops by nearest neighbour from the depot (choosing the
// nearest location of each), then improves short walks with 2-opt. It never
// returns a walk longer than the as-is one.
func optimal(stops []stop) []visit {
	left := append([]stop(nil), stops...)
	walk := make([]visit, 0, len(stops))
	at := point{}
	for len(left) > 0 {
		best, bestPlace, bestDist := 0, 0, math.MaxInt
		for i, s := range left {
			for j, p := range s.points {
				if d := manhattan(at, p); d < bestDist {
					best, bestPlace, bestDist = i, j, d
				}
			}
		}
		walk = append(walk, visit{stop: left[best], place: bestPlace})
		at = left[best].points[bestPlace]
		left = append(left[:best], left[best+1:]...)
	}
	// 2-opt costs O(n³) a pass: big requests keep the nearest-neighbour walk.
	for improved := len(walk) <= 200; improved; {
		improved = false
		for i := 0; i < len(walk)-1; i++ {
			for j := i + 1; j < len(walk); j++ {
				candidate := append([]visit(nil), walk...)
				for a, b := i, j; a < b; a, b = a+1, b-1 {
					candidate[a], candidate[b] = candidate[b], candidate[a]
				}
				if walkLength(candidate) < walkLength(walk) {
					walk, improved = candidate, true
				}
			}
		}
	}
	if base := asIs(stops); walkLength(base) < walkLength(walk) {
		return base
	}
	return walk
}

// cluster is a pick list, in the result's shape.
type cluster struct {
	ListID            string   `json:"list_id"`
	Picks             []string `json:"picks"`
	OrderIDs          []string `json:"order_ids"`
	EstimatedDistance int      `json:"estimated_distance"`
}

func newCluster(id string, visits []visit) cluster {
	c := cluster{ListID: id, Picks: []string{}, OrderIDs: []string{}, EstimatedDistance: walkLength(visits)}
	seen := map[string]bool{}
	for _, v := range visits {
		c.Picks = append(c.Picks, v.stop.PickID)
		if !seen[v.stop.OrderID] {
			seen[v.stop.OrderID] = true
			c.OrderIDs = append(c.OrderIDs, v.stop.OrderID)
		}
	}
	return c
}

// clusterStops returns the as-is lists (one per list_id, else per order,
// picked in the given order) and optimized ones: orders sorted by where
// their picks are, packed into lists of at most maxPicksInList picks, each
// walked optimally.
func clusterStops(stops []stop) (asisLists, optimalLists []cluster) {
	type order struct {
		id     string
		stops  []stop
		center point
	}
	var orders []*order
	byOrder := map[string]*order{}
	var listOrder []string
	lists := map[string][]stop{}
	for _, s := range stops {
		o := byOrder[s.OrderID]
		if o == nil {
			o = &order{id: s.OrderID}
			byOrder[s.OrderID] = o
			orders = append(orders, o)
		}
		o.stops = append(o.stops, s)
		list := s.ListID
		if list == "" {
			list = s.OrderID
		}
		if _, ok := lists[list]; !ok {
			listOrder = append(listOrder, list)
		}
		lists[list] = append(lists[list], s)
	}
	for _, id := range listOrder {
		asisLists = append(asisLists, newCluster(id, asIs(lists[id])))
	}

	for _, o := range orders {
		for _, s := range o.stops {
			o.center.X += s.points[0].X
			o.center.Y += s.points[0].Y
		}
		o.center.X /= len(o.stops)
		o.center.Y /= len(o.stops)
	}
	sort.SliceStable(orders, func(i, j int) bool {
		a, b := orders[i].center, orders[j].center
		if a.X != b.X {
			return a.X < b.X
		}
		if a.Y != b.Y {
			return a.Y < b.Y
		}
		return orders[i].id < orders[j].id
	})
	var batch []stop
	flush := func() {
		if len(batch) > 0 {
			optimalLists = append(optimalLists, newCluster(fmt.Sprintf("cluster-%d", len(optimalLists)+1), optimal(batch)))
			batch = nil
		}
	}
	for _, o := range orders {
		if len(batch) > 0 && len(batch)+len(o.stops) > maxPicksInList {
			flush()
		}
		batch = append(batch, o.stops...)
	}
	flush()
	return asisLists, optimalLists
}

func totalDistance(lists []cluster) int {
	total := 0
	for _, c := range lists {
		total += c.EstimatedDistance
	}
	return total
}

// routedPick is a pick of a route result.
type routedPick struct {
	PickID        string   `json:"pick_id"`
	LocationID    string   `json:"location_id"`
	OrderID       string   `json:"order_id"`
	OptimSequence int      `json:"optim_sequence"`
	AsisSequence  int      `json:"asis_sequence"`
	Path          [][2]int `json:"path"`
	Instructions  []string `json:"instructions"`
}

// routeStops returns the picks in their optimal sequence, with both
// sequences, and the as-is and optimal walk lengths.
func routeStops(stops []stop) (picks []routedPick, asisDistance, optimalDistance int) {
	asisIndex := map[string]int{}
	for i, s := range stops {
		asisIndex[s.PickID] = i
	}
	walk := optimal(stops)
	at := point{}
	for i, v := range walk {
		next := v.stop.points[v.place]
		location := v.stop.locations[v.place]
		picks = append(picks, routedPick{
			PickID:        v.stop.PickID,
			LocationID:    location,
			OrderID:       v.stop.OrderID,
			OptimSequence: i,
			AsisSequence:  asisIndex[v.stop.PickID],
			Path:          [][2]int{{at.X, at.Y}, {next.X, at.Y}, {next.X, next.Y}},
			Instructions:  []string{fmt.Sprintf("walk %.1f m to %s and pick %s", float64(manhattan(at, next))/100, location, v.stop.PickID)},
		})
		at = next
	}
	return picks, walkLength(asIs(stops)), walkLength(walk)
}
