pub mod etcd_fixture;
