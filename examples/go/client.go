// Command client calls the gateway's three RPCs from Go and reads its error details.
//
// Usage: client [HOST:PORT] [APP]   (defaults: localhost:50051 default)
// Run ./generate.sh first: it writes the stubs this imports into ./gopath/src.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kfv1 "github.com/wecom-kf-upgrade/wecom-kf-upgrade/gen/go/wecom/kf/v1"
)

const (
	openKfid = "kfxxxxxxxxxxxxxx"
	customer = "wmexample_go"
	deadline = 5 * time.Second
)

// describeError is one line: the status code, the ErrorInfo reason and errcode, any BadRequest fields.
func describeError(err error) string {
	st := status.Convert(err)
	line := "error: code=" + code.Code(st.Code()).String() // FAILED_PRECONDITION, as in google.rpc.Code
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			line += " reason=" + d.Reason
			if errcode, ok := d.Metadata["errcode"]; ok {
				line += " errcode=" + errcode
			}
		case *errdetails.BadRequest:
			fields := make([]string, 0, len(d.FieldViolations))
			for _, v := range d.FieldViolations {
				fields = append(fields, v.Field)
			}
			line += " violations=" + strings.Join(fields, ",")
		}
	}
	return line
}

func run(addr, app string) int {
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		fmt.Println("error: dial:", err)
		return 1
	}
	defer conn.Close()
	client := kfv1.NewCustomerUpgradeServiceClient(conn)

	// Each call gets its own deadline and the x-wecom-app metadata (which configured WeCom app serves it).
	callContext := func() (context.Context, context.CancelFunc) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-wecom-app", app)
		return context.WithTimeout(ctx, deadline)
	}
	upgrade := func(req *kfv1.UpgradeServiceRequest) error {
		ctx, cancel := callContext()
		defer cancel()
		_, err := client.UpgradeService(ctx, req)
		return err
	}

	ctx, cancel := callContext()
	config, err := client.GetUpgradeConfig(ctx, &kfv1.GetUpgradeConfigRequest{})
	cancel()
	if err != nil {
		fmt.Println(describeError(err))
		return 1
	}
	departments := make([]string, 0, len(config.GetMemberRange().GetDepartmentIdList()))
	for _, id := range config.GetMemberRange().GetDepartmentIdList() {
		departments = append(departments, fmt.Sprint(id))
	}
	fmt.Printf("config: members=%s departments=%s chats=%s\n",
		strings.Join(config.GetMemberRange().GetUseridList(), ","),
		strings.Join(departments, ","),
		strings.Join(config.GetGroupchatRange().GetChatIdList(), ","))

	if err := upgrade(&kfv1.UpgradeServiceRequest{
		OpenKfid:       openKfid,
		ExternalUserid: customer,
		Target: &kfv1.UpgradeServiceRequest_Member{
			Member: &kfv1.MemberTarget{Userid: "zhangsan", Wording: "你好，我是你的专属服务专员zhangsan"},
		},
	}); err != nil {
		fmt.Println(describeError(err))
		return 1
	}
	fmt.Println("upgrade member: ok")

	if err := upgrade(&kfv1.UpgradeServiceRequest{
		OpenKfid:       openKfid,
		ExternalUserid: customer,
		Target: &kfv1.UpgradeServiceRequest_Groupchat{
			Groupchat: &kfv1.GroupChatTarget{ChatId: "wraaaaaaaaaaaaaaaa", Wording: "欢迎加入客户群"},
		},
	}); err != nil {
		fmt.Println(describeError(err))
		return 1
	}
	fmt.Println("upgrade groupchat: ok")

	ctx, cancel = callContext()
	_, err = client.CancelUpgrade(ctx, &kfv1.CancelUpgradeRequest{OpenKfid: openKfid, ExternalUserid: customer})
	cancel()
	if err != nil {
		fmt.Println(describeError(err))
		return 1
	}
	fmt.Println("cancel: ok")

	// Two calls that fail on purpose, to show the error details.
	failing := []*kfv1.UpgradeServiceRequest{
		// wangwu is not configured in 升级服务: WeCom answers errcode 95021.
		{
			OpenKfid:       openKfid,
			ExternalUserid: customer,
			Target:         &kfv1.UpgradeServiceRequest_Member{Member: &kfv1.MemberTarget{Userid: "wangwu"}},
		},
		// Nothing set: refused by the gateway before any WeCom call.
		{},
	}
	for _, req := range failing {
		if err := upgrade(req); err != nil {
			fmt.Println(describeError(err))
		} else {
			fmt.Println("error: none, but the call should have failed")
			return 1
		}
	}
	return 0
}

func main() {
	addr, app := "localhost:50051", "default"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if len(os.Args) > 2 {
		app = os.Args[2]
	}
	os.Exit(run(addr, app))
}
